from cutover.cli import main

main(prog_name="cutover")
