from notebook_kernels_mixer.cli import main

raise SystemExit(main())
