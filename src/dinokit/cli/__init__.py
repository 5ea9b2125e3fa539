"""Command line: flags become typed configs; the library takes the configs."""
