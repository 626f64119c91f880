"""A generic 3PL (the AMS model): loopsync hands each Loop return to the 3PL as an RMA and
reads back what the 3PL received, over HTTP or through shared folders.

The RMA number is always the Loop return id (the number in the Loop admin URL
https://admin.loopreturns.com/returns/99904598). A 3PL implements its side from this text.

Receipts and statuses
---------------------
A receipt record says that some units of one SKU of one RMA were received in a condition:
`available`, `damaged`, `missing`, or another word the merchant maps to one of these in
`warehouse.condition_map`. An unmapped word holds the return back (reported as a poll
problem) until it is mapped; nothing is guessed. Per RMA loopsync computes:

- `complete` when every expected unit is accounted for (available + damaged + missing >=
  expected, per SKU), else `partial`;
- per SKU: units physically received (available + damaged) and the worst condition
  (missing > damaged > available).

By default `complete` with every unit available is processed; any damaged or missing unit,
or a count that differs from the RMA, is flagged with a note; `partial` waits.

Records with the same `receipt_id` for the same RMA are one record: a repeat (a re-sent
page, a duplicated file) changes nothing, and a later record with that id replaces the
earlier one (a correction).

HTTP transport
--------------
1. loopsync POSTs each RMA to `rma_url`::

       POST {rma_url}
       Content-Type: application/json
       {auth_header}: {auth_token}                       (when auth_token is set)
       X-Loopsync-Timestamp: 1780315200                   (when signing_secret is set)
       X-Loopsync-Signature: sha256=<hex>                 (when signing_secret is set)

       {
         "rma_number": "99904598",                 string, the Loop return id
         "loop_return_id": "99904598",             string, same value
         "created_at": "2026-05-01T12:00:00Z",     ISO-8601 UTC, when the return was created
         "destination": "WH-EAST",                 string, the mapped warehouse/site ("" if none)
         "order": {"name": "#1001", "number": "1001", "id": "90001001"},   strings or null
         "customer": "jane@example.com",           string or null
         "carrier": "USPS",                        string or null
         "tracking_number": "9400...",             string or null
         "lines": [                                one per SKU, at least one
           {"line": 1, "sku": "TEE-BLK-M", "quantity": 2, "title": "Classic Tee - Black / M"}
         ]
       }

   The signature is the lowercase hex HMAC-SHA256, keyed with the shared signing secret,
   of this canonical string (bytes; `\n` is one line feed)::

       "v1\n" + timestamp + "\n" + METHOD + "\n" + path + "\n" + body

   `timestamp` is the X-Loopsync-Timestamp header exactly as sent (Unix seconds, ASCII
   digits); METHOD is upper case (`POST`); `path` is the request target exactly as on the
   request line (`/rmas`, with `?query` when rma_url has one); `body` is the exact body
   bytes. Before parsing, recompute it, compare with `hmac.compare_digest` (constant
   time), and answer 401 when it does not match or when the timestamp is more than 5
   minutes from your clock (a replayed request). A rate-limited POST is re-sent with its
   first timestamp, at most ~2 minutes later. `examples/verify_signature.py` is a
   verifying receiver.

   Answers: `201` (or `200`) with the stored RMA record `{"rma_number": "...", ...}`.
   **Idempotent by RMA number**: POSTing a number the 3PL already has must not create a
   second RMA; answer `200` or `409` with the existing record. loopsync repeats a POST only
   after checking with `GET` (below), but a lost answer can still make it repeat one.
   `400`/`422` with `{"error": "why"}` refuses the RMA (loopsync records it as rejected and
   does not retry); `401`/`403` bad credentials; `429` (Retry-After honoured) and `5xx` are
   retried later.

2. loopsync looks an RMA up before repeating a POST whose answer was lost::

       GET {rma_url}/{rma_number}    ->  200 {"rma_number": "99904598", ...}  |  404

3. loopsync polls receipts::

       GET {receipts_url}?since=2026-06-01T00:00:00Z&page=1&page_size=100

   `since` (ISO-8601 UTC): receipts with `received_at >= since`; `page` is 1-based;
   `page_size` is a maximum. Order the records by `received_at`, then `receipt_id`, so
   pages stay stable while new receipts arrive. Answer::

       {
         "receipts": [
           {
             "receipt_id": "R-1001",          string, unique within the RMA, required
             "rma_number": "99904598",        string, required
             "sku": "TEE-BLK-M",              string, required
             "quantity": 1,                   integer >= 0, required
             "condition": "available",        string, required
             "received_at": "2026-06-02T14:03:00Z"   ISO-8601 with zone, required
           }
         ],
         "next_page": 2                       integer, or null on the last page
       }

   loopsync keeps every record it has read and asks again from a few minutes before the
   newest `received_at` it has seen, so overlapping answers are expected and harmless. A
   record that breaks this schema holds back the RMA it names (`loopsync status` says
   why; nothing is skipped silently) and is read again until the 3PL corrects it;
   other RMAs go on.

4. Optionally, the 3PL tells loopsync at once that an RMA received something (receipt
   webhook; polling stays the truth, so a lost one costs latency, never a return)::

       POST {public_url}/webhooks/generic/{merchant}
       Content-Type: application/json
       X-Loopsync-Timestamp: 1780315200
       X-Loopsync-Signature: sha256=<hex>

       {"event_id": "R-1001-ev1", "rma_number": "99904598", "topic": "receipt"}

   Signed exactly as loopsync signs its RMA POST (above), with the merchant's
   `webhooks.generic_secret`: `path` is `/webhooks/generic/{merchant}` (as sent on the
   request line). `event_id` is unique per event (a repeat is recognised and changes
   nothing); `topic` is optional. Answers: `200` stored (then loopsync polls that RMA's
   receipts and acts); `401` bad or missing signature; `400` a timestamp more than 5
   minutes from loopsync's clock, or a body without `event_id`/`rma_number`; `404`
   unknown merchant; `413` over 1 MiB; `415` not JSON; `503` try again later.

Folder transport
----------------
loopsync owns `archive/` and `rejected/`; the 3PL writes `inbox/` and reads `outbox/`.

- RMAs: loopsync writes `outbox/<rma_number>.csv` atomically (a hidden temporary file in
  the same folder, fsync, rename), so a file under its final name is always complete.
  Rewriting the same RMA after a crash writes the same name: treat a repeated RMA number
  as the same RMA. The 3PL may leave, delete, or move picked-up files to `archive/`.
  Columns, in this order, with a header row (UTF-8, comma separated, RFC 4180 quoting),
  one row per SKU::

      rma_number,line,sku,quantity,title,order_name,order_number,customer,destination,carrier,tracking_number,created_at

  A text cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
  leading `'` so a spreadsheet shows it as text instead of running it as a formula
  (`-TEE` is written `'-TEE`); strip that `'` when reading such a cell. `line` and
  `quantity` are plain numbers. In receipt files loopsync reads `'-TEE` back as `-TEE`.

- Receipts: the 3PL writes `*.csv` files into `inbox/`, named as it likes, each written
  under a temporary name (starting with `.` or ending in `.tmp`) and then renamed. A
  header row is required; column names are case-insensitive and in any order; other
  columns are ignored; UTF-8 (a BOM is fine)::

      rma_number,sku,quantity,condition[,receipt_id][,received_at]

  `quantity` is an integer >= 0; `received_at` is ISO-8601 (UTC when it has no zone).
  Give every row a `receipt_id`; a row without one is identified by the bytes of its file
  and its row number, so only an exact duplicate file is recognised as a repeat.
- After loopsync has stored what a file said it moves the file to `archive/` (never
  deletes; a name already there gets a `.1`, `.2`, ... suffix). A file with any bad row is
  moved whole to `rejected/` with `<name>.reason.txt` beside it, and the other files still
  apply; fix it and drop it into `inbox/` again.
- Links: loopsync never follows a symbolic link it did not create. An inbox entry that is
  a link (or a FIFO, a device, anything but a regular file) is not read and not quoted,
  only named in `loopsync status`; a link at a name loopsync would write (an outbox file,
  a reason file, an archive name) is never written through: the outbox write is refused
  and retried, and a reason file or archive name moves on to a free name. Files are only
  created inside the configured folders: names come from the folder listing or from the
  RMA number, and an RMA number that is not a plain file name (`..`, `/`) is refused.

Package layout: `settings` (the `warehouse:` keys), `wire_http` and `wire_folder` (the
two transports, apart because they share nothing but the `Transport` protocol),
`mapping` (pure: records and statuses), `connector` (the glue the engine uses). This
docstring is the contract; docs/api/generic.md presents it for a 3PL's developers.
"""

from loopsync.connectors.generic.connector import GenericConnector, Transport
from loopsync.connectors.generic.mapping import (
    FORMULA_START,
    RMA_COLUMNS,
    HeldRecord,
    ReceiptLine,
    ReceiptRead,
    neutralise,
    parse_receipt,
    parse_receipt_file,
    receipt_status,
    rma_csv,
    rma_record,
    unneutralise,
)
from loopsync.connectors.generic.settings import GenericSettings, parse_settings
from loopsync.connectors.generic.wire_folder import FolderTransport, write_atomically
from loopsync.connectors.generic.wire_http import HttpTransport, request_target, sign
from loopsync.webhooks import canonical_string

__all__ = [
    "FORMULA_START",
    "RMA_COLUMNS",
    "FolderTransport",
    "GenericConnector",
    "GenericSettings",
    "HeldRecord",
    "HttpTransport",
    "ReceiptLine",
    "ReceiptRead",
    "Transport",
    "canonical_string",
    "neutralise",
    "parse_receipt",
    "parse_receipt_file",
    "parse_settings",
    "receipt_status",
    "request_target",
    "rma_csv",
    "rma_record",
    "sign",
    "unneutralise",
    "write_atomically",
]
