from pnlm.cli.app import main

main()
