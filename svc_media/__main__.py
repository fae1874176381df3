from svc_media.app import main

main()
