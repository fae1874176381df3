from svc_message.app import main

main()
