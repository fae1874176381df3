from svc_keys.app import main

main()
