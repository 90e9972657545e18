import _import_stub

_import_stub.become(__name__)
