from shadowtape.cli import main

main()
