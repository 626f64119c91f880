"""The emulated PeopleVox, spoken to with hand-written SOAP over real HTTP (independent of
the connector's own XML code), plus its SearchClause language and hooks."""

from __future__ import annotations

import base64
import csv
import io
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape

import pytest
import requests

from loopsync.configkit import Section
from loopsync.connectors.peoplevox.connector import PeopleVoxConnector
from loopsync.sandbox.peoplevox import ClauseError, PeopleVoxEmulator, compile_clause
from loopsync.sandbox.server import ApiServer, Request
from loopsync.testing import FakeClock

PVX = "http://www.peoplevox.net/"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
PATH = "/loopsync01/resources/integrationservicev4.asmx"


class Client:
    """Raw SOAP 1.1 the way the reference shows it (default namespace on the operation)."""

    def __init__(self, url: str) -> None:
        self.url = url + PATH
        self.http = requests.Session()
        self.session_id = ""

    def post(
        self,
        operation: str,
        inner: str,
        *,
        action: str | None = None,
        header: bool = True,
        path: str | None = None,
    ) -> requests.Response:
        head = ""
        if header:
            head = (
                f'<soap:Header><UserSessionCredentials xmlns="{PVX}"><UserId>0</UserId>'
                f"<ClientId>loopsync01</ClientId><SessionId>{self.session_id}</SessionId>"
                "</UserSessionCredentials></soap:Header>"
            )
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP}">'
            f'{head}<soap:Body><{operation} xmlns="{PVX}">{inner}</{operation}></soap:Body>'
            "</soap:Envelope>"
        )
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        if action != "":
            headers["SOAPAction"] = f'"{PVX}{action or operation}"'
        url = self.url if path is None else self.url.replace(PATH, path)
        return self.http.post(url, data=body.encode("utf-8"), headers=headers)

    def result(self, operation: str, inner: str, **kw: Any) -> dict[str, str]:
        resp = self.post(operation, inner, **kw)
        assert resp.status_code == 200, resp.text
        root = ET.fromstring(resp.content)
        result = root.find(f".//{{{PVX}}}{operation}Result")
        assert result is not None
        return {el.tag.split("}")[1]: el.text or "" for el in result}

    def login(self, password: str = "pvx-Pässwörd!") -> dict[str, str]:
        encoded = base64.b64encode(password.encode()).decode()
        out = self.result(
            "Authenticate",
            f"<clientId>loopsync01</clientId>"
            f"<username>api</username><password>{encoded}</password>",
            header=False,
        )
        if out["ResponseId"] == "0":
            self.session_id = out["Detail"].split(",")[1]
        return out

    def get(
        self,
        template: str,
        clause: str = "",
        page: int = 1,
        per_page: int = 0,
        operation: str = "GetData",
        columns: str = "",
    ) -> dict[str, str]:
        wrapper = "getReportRequest" if operation == "GetReportData" else "getRequest"
        cols = f"<Columns>{escape(columns)}</Columns>" if columns else ""
        # Each operation's own filter element: GetReportData's is FilterClause.
        where = "FilterClause" if operation == "GetReportData" else "SearchClause"
        return self.result(
            operation,
            f"<{wrapper}><TemplateName>{template}</TemplateName>"
            f"<PageNo>{page}</PageNo><ItemsPerPage>{per_page}"
            f"</ItemsPerPage>{cols}<{where}>{escape(clause)}"
            f"</{where}></{wrapper}>",
        )

    def save(self, template: str, csv_data: str) -> dict[str, str]:
        return self.result(
            "SaveData",
            f"<saveRequest><TemplateName>{template}</TemplateName>"
            f"<CsvData>{escape(csv_data)}</CsvData><Action>0</Action>"
            "</saveRequest>",
        )


def rows(detail: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(detail, newline="")))


def fault_of(resp: requests.Response) -> tuple[str, str]:
    fault = ET.fromstring(resp.content).find(f".//{{{SOAP}}}Fault")
    assert fault is not None, resp.text
    return fault.findtext("faultcode") or "", fault.findtext("faultstring") or ""


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock("2026-06-01T12:00:00Z")


@pytest.fixture
def emu(fake_clock: FakeClock) -> PeopleVoxEmulator:
    emulator = PeopleVoxEmulator(clock=fake_clock)
    emulator.on_loop_return(
        {
            "id": "501",
            "order_name": "#1001",
            "order_number": "1001",
            "provider_order_id": "gid-1",
            "line_items": [
                {"sku": "SKU-1", "title": "Tee"},
                {"sku": "SKU-2", "title": "Zoë's jumper"},
            ],
        }
    )
    return emulator


@pytest.fixture
def client(emu: PeopleVoxEmulator) -> Iterator[Client]:
    server = ApiServer(emu).start()
    yield Client(server.url)
    server.stop()


RA_HEADER = "ReturnAuthorizationNumber,SalesOrderNumber,SiteReference,ReturnSenderName\n"
ITEMS_HEADER = "ReturnAuthorizationNumber,ItemCode,ReturnAuthorizationItemLineNumber,Quantity\n"


def make_ra(client: Client, number: str = "501", lines: str = "1") -> None:
    assert (
        client.save("Return authorizations", RA_HEADER + f"{number},1001,MAIN,Ann\n")["ResponseId"]
        == "0"
    )
    assert (
        client.save(
            "Return authorizations items",
            ITEMS_HEADER + f"{number},SKU-1,1,{lines}\n{number},SKU-2,2,1\n",
        )["ResponseId"]
        == "0"
    )


# -- authentication and sessions --------------------------------------------------------


def test_authenticate_checks_the_base64_password(client: Client) -> None:
    ok = client.login()
    assert ok["ResponseId"] == "0" and ok["Detail"].startswith("loopsync01,")
    assert client.login("wrong")["ResponseId"] == "-1"
    raw = client.result(
        "Authenticate",
        "<clientId>loopsync01</clientId><username>api</username><password>pvx-Pässwörd!</password>",
        header=False,
    )
    assert (raw["ResponseId"], raw["Detail"]) == ("-1", "Password is not base64 encoded")


def test_calls_need_a_live_session(
    client: Client, emu: PeopleVoxEmulator, fake_clock: FakeClock
) -> None:
    no_header = client.result(
        "GetSaveTemplate", "<templateName>Return authorizations</templateName>", header=False
    )
    assert (no_header["ResponseId"], no_header["Detail"]) == ("-1", "Invalid Session")
    client.login()
    assert client.get("Sales orders")["ResponseId"] == "0"
    fake_clock.advance(1799)
    assert client.get("Sales orders")["ResponseId"] == "0"  # idle time restarts on use
    fake_clock.advance(1801)
    assert client.get("Sales orders")["Detail"] == "Invalid Session"
    client.login()
    emu.expire_sessions()
    assert client.get("Sales orders")["Detail"] == "Invalid Session"


# -- transport --------------------------------------------------------------------------


def test_path_is_case_insensitive_and_other_paths_are_404(client: Client) -> None:
    assert client.login()["ResponseId"] == "0"
    resp = client.post(
        "GetSaveTemplate",
        "<templateName>Return authorizations</templateName>",
        path="/LOOPSYNC01/Resources/IntegrationServiceV4.asmx",
    )
    assert resp.status_code == 200 and b"ReturnAuthorizationNumber" in resp.content
    assert client.post("Authenticate", "", path="/other/resources/x.asmx").status_code == 404


def test_dispatch_on_the_body_without_soapaction_and_faults(client: Client) -> None:
    client.login()
    resp = client.post(
        "GetSaveTemplate", "<templateName>Return authorizations</templateName>", action=""
    )
    assert resp.status_code == 200 and b"SiteReference" in resp.content
    mismatch = client.post("GetSaveTemplate", "<templateName>x</templateName>", action="GetData")
    assert mismatch.status_code == 500 and fault_of(mismatch)[0] == "soap:Client"
    unknown = client.post("DeleteEverything", "")
    assert fault_of(unknown) == (
        "soap:Client",
        "Server did not recognize the value of HTTP Header SOAPAction: DeleteEverything.",
    )
    broken = client.http.post(
        client.url, data=b"<soap:Envelope><unclosed>", headers={"SOAPAction": f'"{PVX}GetData"'}
    )
    assert broken.status_code == 500
    code, message = fault_of(broken)
    assert code == "soap:Client" and "error in XML document" in message


def test_throttling_after_15_calls_in_15_seconds(
    client: Client, emu: PeopleVoxEmulator, fake_clock: FakeClock
) -> None:
    client.login()
    for _ in range(14):
        assert client.get("Sales orders")["ResponseId"] == "0"
    throttled = client.post(
        "GetData", "<getRequest><TemplateName>Sales orders</TemplateName></getRequest>"
    )
    assert throttled.status_code == 500 and "Request limit exceeded" in fault_of(throttled)[1]
    assert throttled.headers["Retry-After"] == "15"
    assert emu.throttled == 1
    fake_clock.advance(15)
    assert client.get("Sales orders")["ResponseId"] == "0"
    emu.throttle_enabled = False
    for _ in range(30):
        assert client.get("Sales orders")["ResponseId"] == "0"


# -- templates, SaveData ----------------------------------------------------------------


def test_get_save_template_is_a_csv_header(client: Client) -> None:
    client.login()
    header = client.result(
        "GetSaveTemplate", "<templateName>return AUTHORIZATIONS items</templateName>"
    )["Detail"]
    assert header == (
        "ReturnAuthorizationNumber,ItemCode,ReturnAuthorizationItemLineNumber,"
        "ReturnReason,ReturnAuthorizationItemComments,Quantity"
    )
    missing = client.result("GetSaveTemplate", "<templateName>Nope</templateName>")
    assert (missing["ResponseId"], missing["Detail"]) == ("-1", "Template 'Nope' does not exist")


def test_save_data_stores_hard_csv_values(client: Client, emu: PeopleVoxEmulator) -> None:
    client.login()
    name = 'O\'Brien, "Bob"\nZoë 山田'
    quoted = '"' + name.replace('"', '""') + '"'
    out = client.save("Return authorizations", RA_HEADER + f"501,1001,MAIN,{quoted}\r\n")
    assert (out["ResponseId"], out["TotalCount"]) == ("0", "1")
    assert emu.ra("501")["header"]["ReturnSenderName"] == name
    read = client.get(
        "Return authorizations", 'ReturnSenderName == "O\'Brien, \\"Bob\\"\nZoë 山田"'
    )
    assert read["TotalCount"] == "1" and rows(read["Detail"])[0]["ReturnSenderName"] == name


@pytest.mark.parametrize(
    "template, csv_data, detail",
    [
        (
            "Return authorizations",
            "ReturnAuthorizationNumber,Colour\n501,red\n",
            "Column 'Colour' is not in template 'Return authorizations'",
        ),
        (
            "Return authorizations",
            RA_HEADER + "501,9999,MAIN,Ann\n",
            "Row 1: Sales order '9999' does not exist",
        ),
        (
            "Return authorizations",
            RA_HEADER + "501,1001,MARS,Ann\n",
            "Row 1: Site 'MARS' does not exist",
        ),
        (
            "Return authorizations items",
            ITEMS_HEADER + "777,SKU-1,1,1\n",
            "Row 1: Return authorization '777' does not exist",
        ),
        ("Not a template", "A\n1\n", "Template 'Not a template' does not exist"),
    ],
)
def test_save_data_refusals(client: Client, template: str, csv_data: str, detail: str) -> None:
    client.login()
    out = client.save(template, csv_data)
    assert (out["ResponseId"], out["Detail"]) == ("-1", detail)


def test_save_data_saves_good_rows_and_names_the_bad_ones(
    client: Client, emu: PeopleVoxEmulator
) -> None:
    client.login()
    client.save("Return authorizations", RA_HEADER + "501,1001,MAIN,Ann\n")
    duplicate = client.save("Return authorizations", RA_HEADER + "501,1001,MAIN,Ann\n")
    assert duplicate["Detail"] == "Row 1: Return authorization '501' already exists"
    out = client.save(
        "Return authorizations items",
        "ReturnAuthorizationNumber,ItemCode,Quantity,ReturnReason\n"
        "501,SKU-1,1,SIZE\n501,GHOST,1,\n501,SKU-2,0,\n501,SKU-2,1,WHIM\n",
    )
    assert out["ResponseId"] == "-1" and out["TotalCount"] == "1"
    assert out["Detail"] == (
        "Row 2: Item code 'GHOST' does not exist; Row 3: Quantity '0' is "
        "not a positive whole number; Row 4: Return reason 'WHIM' does "
        "not exist"
    )
    assert [i["ItemCode"] for i in emu.ra("501")["items"]] == ["SKU-1"]


# -- GetData / GetReportData ------------------------------------------------------------


def test_get_data_pages_with_total_count(client: Client, emu: PeopleVoxEmulator) -> None:
    for n in range(5):
        emu.add_sales_order(f"20{n}", Attribute1='x, "quoted"')
    client.login()
    first = client.get("Sales orders", 'Attribute1 == "x, \\"quoted\\""', page=1, per_page=2)
    assert first["TotalCount"] == "5"
    assert [r["SalesOrderNumber"] for r in rows(first["Detail"])] == ["200", "201"]
    last = client.get("Sales orders", 'Attribute1 == "x, \\"quoted\\""', page=3, per_page=2)
    assert [r["SalesOrderNumber"] for r in rows(last["Detail"])] == ["204"]
    assert rows(last["Detail"])[0]["Attribute1"] == 'x, "quoted"'
    assert len(rows(client.get("Sales orders", per_page=0)["Detail"])) == 6


def test_report_columns_and_search(
    client: Client, emu: PeopleVoxEmulator, fake_clock: FakeClock
) -> None:
    client.login()
    make_ra(client)
    emu.receive("501", "damaged")
    out = client.get(
        "Loop returns",
        '[RMA number] == "501" AND [Item code].Equals("SKU-1")',
        operation="GetReportData",
        columns="[RMA number],[RMA status],[Return condition],[Is reusable]",
    )
    assert rows(out["Detail"]) == [
        {
            "RMA number": "501",
            "RMA status": "Completed",
            "Return condition": "Damaged",
            "Is reusable": "No",
        }
    ]
    since = client.get(
        "Loop returns", "[Return date] >= DateTime(2026,06,01,12,00,00)", operation="GetReportData"
    )
    assert since["TotalCount"] == "2"
    assert rows(since["Detail"])[0]["Return date"] == "01/06/2026 12:00:00"
    later = client.get(
        "Loop returns", "[Return date] > DateTime(2026,06,01,12,00,00)", operation="GetReportData"
    )
    assert later["TotalCount"] == "0"
    bad = client.get("Loop returns", operation="GetReportData", columns="[Colour]")
    assert (bad["ResponseId"], bad["Detail"]) == ("-1", "Unknown column 'Colour'")
    unknown = client.get("Sales orders", 'Colour == "red"')
    assert (unknown["ResponseId"], unknown["Detail"]) == ("-1", "Unknown field 'Colour'")


# -- SearchClause (pure) ----------------------------------------------------------------

COLUMNS = ["Name", "Qty", "Return date", "Code"]
ROWS = [
    {"Name": "alpha", "Qty": "1", "Return date": "01/06/2026 10:00:00", "Code": "A"},
    {"Name": 'be"ta', "Qty": "5", "Return date": "02/06/2026 10:00:00", "Code": "B"},
    {"Name": "gamma", "Qty": "10", "Return date": "", "Code": "C"},
]


@pytest.mark.parametrize(
    "clause, codes",
    [
        ("", "ABC"),
        ('Name == "alpha"', "A"),
        ('Name.Equals("be\\"ta")', "B"),
        ('Name != "alpha"', "BC"),
        ("Qty >= 5", "BC"),
        ("Qty < 5 OR Qty > 9", "AC"),
        ('Name == "alpha" OR Name == "gamma" AND Qty == 1', "A"),  # AND binds tighter
        ('(Name == "alpha" OR Name == "gamma") AND Qty == 10', "C"),
        ('name == "alpha" and code == "A"', "A"),
        ('Name.Contains("mm") || Name.StartsWith("al")', "AC"),
        ("[Return date] >= DateTime(2026,06,02,00,00,00)", "B"),
        ("[Return date] < DateTime(2026,06,02,00,00,00)", "A"),
        ('Name.EndsWith("ta") && Qty <= 5', "B"),
    ],
)
def test_search_clause_subset(clause: str, codes: str) -> None:
    matches = compile_clause(clause, COLUMNS)
    assert "".join(r["Code"] for r in ROWS if matches(r)) == codes


@pytest.mark.parametrize(
    "clause",
    [
        'Colour == "x"',
        "Name ==",
        'Name == "x" AND',
        "(Qty == 1",
        "Name ~ 1",
        'Name == "x" Qty == 1',
    ],
)
def test_search_clause_errors(clause: str) -> None:
    with pytest.raises(ClauseError):
        compile_clause(clause, COLUMNS)


# -- hooks ------------------------------------------------------------------------------


def test_receive_scenarios(client: Client, emu: PeopleVoxEmulator) -> None:
    emu.throttle_enabled = False  # more than 15 calls, all at one fake instant
    client.login()
    assert not emu.receive("501", "full")  # no RA yet
    expected = {
        "full": ("Completed", {"SKU-1": ("2", "Good", "Yes"), "SKU-2": ("1", "Good", "Yes")}),
        "short": (
            "Completed with discrepancies",
            {"SKU-1": ("1", "Good", "Yes"), "SKU-2": ("1", "Good", "Yes")},
        ),
        "over": (
            "Completed with discrepancies",
            {"SKU-1": ("3", "Good", "Yes"), "SKU-2": ("1", "Good", "Yes")},
        ),
        "damaged": ("Completed", {"SKU-1": ("2", "Damaged", "No"), "SKU-2": ("1", "Good", "Yes")}),
        "cancelled": ("Cancelled", {"SKU-1": ("0", "", ""), "SKU-2": ("0", "", "")}),
    }
    for n, (scenario, (status, items)) in enumerate(expected.items()):
        number = f"50{n + 1}"
        make_ra(client, number, lines="2")
        assert emu.receive(number, scenario)
        report = rows(
            client.get("Loop returns", f'[RMA number] == "{number}"', operation="GetReportData")[
                "Detail"
            ]
        )
        assert {r["RMA status"] for r in report} == {status}
        assert {
            r["Item code"]: (r["Quantity"], r["Return condition"], r["Is reusable"]) for r in report
        } == items
    with pytest.raises(ValueError):
        emu.receive("501", "lost in space")


def test_complete_with_conditions_and_quantities(client: Client, emu: PeopleVoxEmulator) -> None:
    client.login()
    make_ra(client)
    emu.complete(
        "501",
        "Completed with discrepancies",
        conditions={"SKU-2": "Worn"},
        reusable={"SKU-2": False},
        received={"SKU-1": 0},
    )
    report = {
        r["Item code"]: r
        for r in rows(client.get("Loop returns", operation="GetReportData")["Detail"])
    }
    assert (report["SKU-1"]["Quantity"], report["SKU-1"]["Return condition"]) == ("0", "")
    assert (report["SKU-2"]["Return condition"], report["SKU-2"]["Is reusable"]) == ("Worn", "No")
    assert report["SKU-2"]["Item name"] == "Zoë's jumper"


def test_rma_count_has_rma_and_is_write(client: Client, emu: PeopleVoxEmulator) -> None:
    client.login()
    assert (emu.has_rma("501"), emu.rma_count("501")) == (False, 0)
    make_ra(client)
    assert (emu.has_rma("501"), emu.rma_count("501")) == (True, 1)

    def request(action: str) -> Request:
        return Request("POST", PATH, {}, {}, _headers({"SOAPAction": f'"{PVX}{action}"'}), b"")

    assert emu.is_write(request("SaveData"))
    assert not emu.is_write(request("GetData")) and not emu.is_write(request("Authenticate"))


def _headers(items: dict[str, str]) -> Any:
    from loopsync.sandbox.server import CaseInsensitiveDict

    return CaseInsensitiveDict(items)


def test_on_loop_return_without_order_knows_only_the_skus(emu: PeopleVoxEmulator) -> None:
    emu.on_loop_return(
        {"id": "777", "order_name": "#7777", "line_items": [{"sku": "NEW-1"}]}, with_order=False
    )
    assert "NEW-1" in emu.items
    assert not any(so["SalesOrderNumber"] == "7777" for so in emu.sales_orders)
    assert emu.sales_orders[0] == {
        "SalesOrderNumber": "1001",
        "CustomerPurchaseOrderReferenceNumber": "1001",
        "Attribute1": "gid-1",
        "Attribute2": "",
        "Attribute3": "",
        "Attribute4": "",
        "Attribute5": "",
    }


def test_warehouse_config_is_a_valid_connector_config(emu: PeopleVoxEmulator) -> None:
    cfg = emu.warehouse_config("http://127.0.0.1:9")
    assert cfg["kind"] == "peoplevox" and cfg["password"] == "${PEOPLEVOX_PASSWORD}"
    assert cfg["destinations"] == {"12": "MAIN", "13": "RETURNS-UK"}
    section = Section(
        {k: v for k, v in cfg.items() if k not in ("kind", "destinations", "grading")},
        file="sandbox.yaml",
        path="warehouse",
        env=emu.secret_env(),
    )
    section.url("base_url")
    own = PeopleVoxConnector.parse_settings(section)
    section.done()
    assert own.password.value == "pvx-Pässwörd!" and own.client_id == "loopsync01"


def test_report_dates_follow_the_clock(
    client: Client, emu: PeopleVoxEmulator, fake_clock: FakeClock
) -> None:
    client.login()
    make_ra(client)
    fake_clock.set("2026-12-24T18:30:05Z")
    emu.receive("501", "full")
    client.login()  # the old session went idle long ago
    dates = {
        r["Return date"]
        for r in rows(client.get("Loop returns", operation="GetReportData")["Detail"])
    }
    assert dates == {datetime(2026, 12, 24, 18, 30, 5).strftime("%d/%m/%Y %H:%M:%S")}
