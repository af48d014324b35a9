"""The notebook faces: the ``%pool`` magics, output routing into cells, the widget, the comm.

They only call the pool's public API and read its snapshots and events.
"""
