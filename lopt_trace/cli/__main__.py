from lopt_trace.cli import main; import sys; sys.exit(main())
