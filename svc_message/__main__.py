import sys

from svc_message.app import main
from svc_message.archive_cli import main as archive_main

if sys.argv[1:2] == ["archive"]:
    archive_main(sys.argv[2:])
else:
    main()
