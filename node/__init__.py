"""The pacsnode server: everything that touches the network, the disk, the index or the clock."""

__version__ = "0.1.0"
