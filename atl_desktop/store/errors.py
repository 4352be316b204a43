"""Errors the store raises; each carries a message fit to show a user as it is."""


class ProjectError(Exception):
    """A problem with a project that the user can understand and fix."""


class NewerProjectError(ProjectError):
    """The project file was written by a newer ATL Desktop; it is left untouched."""


class ProjectLockedError(ProjectError):
    """Another process holds the project open for writing."""


class ClassError(ProjectError):
    """A class name is missing, taken, or otherwise unusable."""
