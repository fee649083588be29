from clawproxy.process.cli import main

main()
