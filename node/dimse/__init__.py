"""DIMSE: the node's application entity (server), its handlers and its SCU side."""
