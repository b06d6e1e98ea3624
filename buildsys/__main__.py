"""python -m buildsys and the `modelbuild` command: an unchanged project is answered from the no-op
snapshot (buildsys.cli.noop, standard library only) before the CLI and its imports load."""


def main() -> None:
    from buildsys.cli.noop import answer

    answer()  # returns unless this exact command is a no-op on an unchanged project
    from buildsys.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
