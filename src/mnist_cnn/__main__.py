from mnist_cnn.cli import main

raise SystemExit(main())
