"""The science of pacsnode: pure analyzers that turn DICOM series into DICOM results.

Nothing in this package touches the network, the index or the node's clock;
see ``analyzers.contract`` for the interface the node calls.
"""
