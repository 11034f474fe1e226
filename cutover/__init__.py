"""cutover: staged cutover of a merged city's shared government systems onto one platform."""

__version__ = "0.1.0"
