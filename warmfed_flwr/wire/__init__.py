"""The wire format between server and clients: what they agree on (``protocol``), the named-tensor codec and the
validation of every upload (``payload``), and update arithmetic on weight lists (``updates``)."""
