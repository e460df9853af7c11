from gantrain.cli import main

raise SystemExit(main())
