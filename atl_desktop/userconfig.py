"""What the command line reads of the window's own settings, without Qt.

The window keeps who is labelling in QSettings("ATL Desktop", "ATL Desktop") under the key
"annotator" (gui/app.py ask_annotator). On Linux that is an INI file in the XDG config folder,
read here with configparser; elsewhere (a plist, the registry) the login name is used, which is
also the window's own fallback.
"""

from __future__ import annotations

import configparser
import getpass
import os
import sys
from pathlib import Path

APP_NAME = "ATL Desktop"  # the organisation and application name the window gives QSettings


def window_settings_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / APP_NAME / f"{APP_NAME}.conf"


def configured_annotator() -> str:
    """The name the window records with labels: its saved one, else the login name."""
    if sys.platform.startswith("linux"):
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(window_settings_file(), encoding="utf-8")
        except (configparser.Error, OSError, UnicodeDecodeError):
            pass  # an unreadable settings file: fall back like the window does
        else:
            name = parser.get("General", "annotator", fallback="").strip()
            if len(name) >= 2 and name[0] == name[-1] == '"':  # Qt quotes values with edge spaces
                name = name[1:-1].strip()
            if name:
                return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (some containers)
        return ""
