from certpager.cli import main

raise SystemExit(main())
