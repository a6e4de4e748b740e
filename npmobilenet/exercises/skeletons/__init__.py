"""Skeleton files of the exercises: copy one with ``npmobilenet exercise start NAME DIR``."""
