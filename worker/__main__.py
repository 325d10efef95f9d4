"""`python -m worker` is the same as the `facewatch` command."""

from worker.cli.main import main

raise SystemExit(main())
