from loopsync.cli import main

raise SystemExit(main())
