"""`python -m atl_desktop` opens the desktop application."""

from atl_desktop.gui.app import main

if __name__ == "__main__":
    raise SystemExit(main())
