"""The packaged program's entry point: `atl-desktop [PROJECT.atl] [--self-test] ...`;
`atl-desktop --atl ARGS...` runs the `atl` command line instead (one program serves both)."""

import sys

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--atl":
        from atl_desktop.cli import main

        raise SystemExit(main(sys.argv[2:]))
    from atl_desktop.gui.app import main

    raise SystemExit(main())
