from svc_search.app import main

main()
