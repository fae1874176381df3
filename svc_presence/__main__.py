from svc_presence.app import main

main()
