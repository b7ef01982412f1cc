"""The one place the package version lives (setup.cfg and the Segment library context read it)."""

__version__ = "0.1.0"
