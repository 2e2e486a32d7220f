from skinseg_cli.cli import main

main()
