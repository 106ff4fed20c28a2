"""A local stand-in for the parts of Grafana's HTTP API that ``meterline grafana push``
uses, checking requests the way Grafana does (no Grafana server is installable here).

Covered (behaviour read from grafana/grafana ``pkg/api/datasources.go``,
``pkg/services/dashboards/errors.go`` and the dashboard store's save checks):

- auth: ``Authorization: Bearer <token>`` of a known token, else 401;
- folders: ``GET/POST /api/folders``, ``GET/PUT /api/folders/{uid}`` — title required,
  uid ``[A-Za-z0-9_-]{0,40}``, 409 for a uid or title already taken, 412
  ``version-mismatch`` for a stale ``version`` without ``overwrite``;
- data sources: ``POST /api/datasources``, ``GET /api/datasources/uid/{uid}`` and
  ``/name/{name}``, ``PUT /api/datasources/uid/{uid}`` — ``name``, ``type`` and ``access``
  required (400 ``bad request data``), 409 for a name or uid taken, 409 for an update of
  an older ``version``, 403 for a provisioned (read-only) one, secrets never returned
  (``secureJsonFields``);
- dashboards: ``POST /api/dashboards/db``, ``GET /api/dashboards/uid/{uid}`` — a
  ``dashboard`` object with a title (400 ``empty-name``), uid rules (400), ``message`` at
  most 500 characters, an unknown ``folderUid`` 404, an unknown ``id`` 404, 412
  ``version-mismatch`` (the stored version differs and no ``overwrite``) and 412
  ``name-exists`` (another dashboard of that title in the folder, no ``overwrite``; with
  ``overwrite`` it is replaced, as Grafana up to 10 did); versions increase by one per save.

Not covered: permissions and roles (every known token may do everything), organisations
(one), nested folders, provisioned dashboards, the dashboard JSON's own schema and its
migrations, whether the data source's plugin is installed or can connect (Grafana's
health check), the ``/apis/…`` Kubernetes-style API of Grafana 12+, version history,
search, alerting and library panels.
"""

from meterline.grafana_standin.app import GrafanaStandin, create_app
from meterline.grafana_standin.server import serve_in_thread

__all__ = ["GrafanaStandin", "create_app", "serve_in_thread"]
