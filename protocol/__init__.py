"""What the ServerApp and the ClientApp must agree on, and nothing of either side's logic.

Record and array names (``records``), the per-round values (``round``), hyper-parameter
declarations (``params``), solver message declarations (``solvers``), array layouts
(``tasks.functional`` flatten/unflatten, ``symmetric``, ``foof``) and Gaussian algebra
(``gaussian``). ``client_app`` and ``strategies`` import from here, never from each other.
"""
