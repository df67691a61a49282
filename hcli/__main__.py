from hcli.cli import main

main()
