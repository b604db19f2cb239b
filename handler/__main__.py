from handler.cli import main

raise SystemExit(main())
