from gigafactory.cli import main

raise SystemExit(main())
