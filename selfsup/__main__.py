from selfsup.cli import main

main()
