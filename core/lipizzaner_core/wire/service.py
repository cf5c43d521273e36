"""The `lipizzaner.v1.Cell` service's name and method paths (protos/lipizzaner/v1/cell.proto).

Only messages are generated from the proto: the server registers generic handlers and
clients call these paths on a channel, so no generated servicer base class (whose
methods are placeholders) or stub is needed.
"""

SERVICE = "lipizzaner.v1.Cell"
GET_CENTRE = f"/{SERVICE}/GetCentre"
GET_STATUS = f"/{SERVICE}/GetStatus"
