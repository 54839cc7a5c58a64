"""Writing selections out: the facility's format, virtual files, CXI, xarray stores and everyday formats.

This layer sits above runs, arrays and views and is never imported by them.
Every writer here goes through :func:`xfeldata.export.atomic.atomic_output`,
so an existing output is only replaced on request and a failure leaves no
partial file.
"""
