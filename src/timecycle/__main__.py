from timecycle.cli import main

raise SystemExit(main())
