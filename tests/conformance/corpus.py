"""What BluePay's own texts and public clients show its replies to be: the corpus both sides are held to.

Every entry names its source. Neither our client nor our sandbox wrote any of it, so a test of the client's
parsers against it and a test of the sandbox's replies against it cannot pass by the two agreeing with each
other on something no source says.

Sources (docs/bluepay.md names them):
* BP10EMU_TEXT: BluePay/Payment_Platform, Documentation/Interfaces/Inbound/
  ``BluePay_2.0_Redirect-1.0_Post_(bp10emu).txt`` (last update 2014-03-27), "OUTPUT FIELDS".
* STQ_TEXT: the same folder, ``BluePay_Single_Transaction_Query_(stq).txt`` (2013-05-17).
* REPORT_TEXT: the same folder, ``BluePay_Daily_Report_2_(bpdailyreport2).txt`` (2013-06-07).
* MESSAGES_TEXT: Documentation/Misc/``BluePay_MESSAGE_values.txt``.
* BLUEPAY_PY: BluePay/BluePay-Sample-Code ``Python/BluePay.py`` 3.0.7 (``assign_response_values``).
* TOKENEX_2023: live BluePay TEST-mode replies (raw ``Location`` strings) published in TokenEx/IXOPAY's
  BluePay connector documentation, https://documentation.ixopay.com/modules/docs/tokenex/payment-services/bluepay
  (recorded 2023-11-30 and 2023-12-08; their BP_STAMP was made with a secret we do not know, so the tests
  stamp the same fields again with ours, by the same definition).
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode

# ------------------------------------------------------------------ documented field names

def _names(text: str) -> frozenset[str]:
    """The names of a source's list, as copied from it (whitespace-separated)."""
    return frozenset(text.split())


#: BP10EMU_TEXT, RESPONSEVERSION NULL, 1 & 2 and 3 output fields (MERCHDATA_* and the echoed request fields of
#: version 3 included), plus the names live replies carried (TOKENEX_2023) and BluePay's own library reads
#: (BLUEPAY_PY: CUST_TOKEN, STORED_ID).
BP10EMU_FIELDS = _names("""
AMOUNT AUTH_CODE AVS BANK_NAME CARD_EXPIRE CARD_TYPE CVV2 INVOICE_ID MESSAGE ORDER_ID PAYMENT_ACCOUNT PAYMENT_TYPE
REBID Result RRNO MISSING
ACCOUNT_NAME ADDR1 ADDR2 AMOUNT_TAX AMOUNT_TIP AVS_RESULT BACKEND_ID BP_STAMP BP_STAMP_DEF CITY COMPANY_NAME
CUST_EMAIL CUST_PHONE CUSTOM_ID CUSTOM_ID2 CVV2_RESULT CVV2_STATUS EMAIL F_CARD_PRESENT F_REBILL_MASTER F_WILL_CAPTURE
FANCY_STATUS FLAGS FRAUD_LOG FRAUD_SCORE ID ISSUE_DATE LOGIN_ACCOUNT_ID MEMO MERCHDATA MODE NAME1 NAME2 ORIGIN
OWNER_USER_ID PHONE PROCESSOR_ID REMOTE_IP STATE STATUS TRANS_ID TRANS_TYPE ZIP
ACH_ACCOUNT_TYPE ACH_ROUTING AMOUNT_FOOD AMOUNT_MISC APPROVED_URL AUTOCAP AVS_ALLOWED CC_EXPIRES_MONTH
CC_EXPIRES_YEAR CC_EXPIRES COMMENT COUNTRY DECLINED_URL DOC_TYPE IS_CORPORATE MERCHANT MISSING_URL NAME REB_AMOUNT
REB_CYCLES REB_EXPR REB_FIRST_DATE REBILLING RESPONSEVERSION TPS_DEF TRANSACTION_TYPE ZIPCODE
TPS_HASH_TYPE LEVEL_2_DATA SOURCE_ID BINDATA CUSTOMER_CODE ORIG_IS_SETTLED F_UNHELD EMV_APPLICATION EMV EMV_APPNAME
CARD_COUNTRY F_BYPASS_AUTH CONNECTED_IP MASTER_ID ORIG_AMOUNT ORIG_TTYPE CUST_TOKEN STORED_ID
""")

#: STQ_TEXT, "Optional Input Parameters / Standard Output Parameters" (names as written there, lower case).
STQ_FIELDS = _names("""
id payment_type trans_type amount card_type payment_account order_id invoice_id custom_id custom_id2 master_id
status f_void message origin issue_date settle_date rebilling_id settlement_id card_expire bank_name addr1 addr2
city state zip phone email auth_code name1 name2 company_name memo backend_id remote_ip avs_result cvv_result
merchdata card_present
""")

#: REPORT_TEXT, version 1 and 2 output fields (``account_id`` only with QUERY_BY_HIERARCHY=1).
REPORT_FIELDS = _names("""
id payment_type trans_type amount card_type payment_account order_id invoice_id custom_id custom_id2 master_id
status f_void message origin issue_date settle_date rebilling_id settlement_id card_expire bank_name addr1 addr2
city state zip memo phone email auth_code name1 name2 company_name backend_id account_id
avs_result cvv_result merchdata card_present
""")

#: MESSAGES_TEXT: the MESSAGE values the gateway itself writes (bank texts and <FIELDNAME> patterns aside).
MESSAGES = frozenset("""
Already Captured|Already Voided|Amount may not be zero.|APPROVED|Approved|Approved Auth|Approved Capture|
Approved Return|Approved Sale|Approved Void|Declined Auth|Declined Sale|Can only REFUND or VOID approved transactions|
Cannot CAPTURE Zero AUTH|Cannot VOID a CAPTURED AUTH (void the CAPTURE instead).|Cannot VOID except for full amount.|
CARD ACCOUNT NOT VALID|COULD NOT LOCATE ORIGINAL TRANSACTION|Card Expired|DECLINED|Decline|DUPLICATE|
Error reading master transaction|
Expiration date required for CREDIT|Expired Card|INFORMATION STORED|Invalid CVV2|Invalid transaction type.|
MISSING PAYMENT ACCOUNT|Master ID required for UPDATE|Master ID required for VOID|Master ID required for CAPTURE|
Need voice auth code to CAPTURE this AUTH|
Only AUTH can be CAPTURED|Refund/VOID amount cannot exceed original charge amount|SECURITY ERROR|This AUTH is VOID|
TRANSACTION IS TOO OLD|TRANSACTION TYPE REQUIRED|VOID cannot be undone|
Your account is in TEST mode; please contact Bluepay.
""".replace("\n", "").split("|"))
#: Patterns of the same text: "Missing <FIELDNAME>", "Cannot REFUND a <TRANS TYPE>", "Cannot <TRANS TYPE> a settled
#: transaction.", "<FIELDNAME> CHECK FAILED" (BP10EMU_TEXT: TRANSACTION TOO OLD is its wording of the expiry).
MESSAGE_PATTERNS = (r"Missing [A-Z0-9_]+", r"Cannot REFUND a [A-Z]+", r"Cannot [A-Z]+ a settled transaction\.",
                    r"[A-Z0-9_]+ CHECK FAILED", r"TRANSACTION TOO OLD")

# ------------------------------------------------------------------ bp10emu replies seen live (TOKENEX_2023)

#: An approved AUTH, 2023-11-30 (Location as recorded; fake customer data from the connector's test suite).
APPROVED_AUTH = (
    "/interfaces/wlcatch?TPS_HASH_TYPE=HMAC_SHA512&AMOUNT_TAX=0.00&LEVEL_2_DATA=customer_number%3D%26cust_po%3D%26"
    "&ISSUE_DATE=2023-11-30%2013%3A45%3A09.033947&PAYMENT_ACCOUNT=xxxxxxxxxxxx4448&FANCY_STATUS=Approved"
    "&ZIP=96592-2764&AUTH_CODE=BARPUD&BACKEND_ID=706282844384&REMOTE_IP=20.37.143.182&TRANS_TYPE=AUTH&STATUS=1"
    "&RRNO=200454159023&CVV2_RESULT=_&SOURCE_ID=200454159023&AVS_RESULT=1&INVOICE_ID=200454159023"
    "&CUSTOMER_CODE=200454159023&FLAGS=T&ORIG_IS_SETTLED=0&F_UNHELD=0&ORDER_ID=200454159023&EMV_APPLICATION="
    "&BANK_NAME=NETWORK%20ONLY&CITY=Ornburgh&F_WILL_CAPTURE=0&ACCOUNT_NAME=DEMO-tokenex&TRANS_ID=200454159023"
    "&PAYMENT_TYPE=CREDIT&AVS=1&MODE=TEST&F_CARD_PRESENT=0&CVV2=_&CVV2_STATUS=0&EMV=&CARD_COUNTRY=USA&AMOUNT=9.00"
    "&LOGIN_ACCOUNT_ID=100553863405&PROCESSOR_ID=100553863525&OWNER_USER_ID=100553863406&STATE=Hawaii"
    "&BP_STAMP=8DD3BAF139458DE9DEB1EC93F0E419301AF80EBE076FC6FE0ACECFB80E1E96B396A346868594DC9F4219843B67215895"
    "5976F470C178D1DB12A69DAAE78B4B25&F_BYPASS_AUTH=0&F_REBILL_MASTER=0&ADDR1=173%20Antonio%20Pike&COUNTRY=USA"
    "&EMV_APPNAME=&COMPANY_NAME=Franecki%2C%20Mertz%20and%20Conroy&MESSAGE=Approved%20Auth"
    "&CUST_EMAIL=Mary0%40gmail.com&REBID=&CONNECTED_IP=20.37.143.182&ID=200454159023&Result=APPROVED&ORIGIN=bp10emu"
    "&BP_STAMP_DEF=RRNO%20ISSUE_DATE%20Result&EMAIL=Mary0%40gmail.com&CARD_EXPIRE=0324&CARD_TYPE=MC&FRAUD_SCORE=0"
)

#: An approved SALE, 2023-11-30.
APPROVED_SALE = (
    "/interfaces/wlcatch?PAYMENT_ACCOUNT=xxxxxxxxxxxx5798&REMOTE_IP=20.37.143.182&CARD_COUNTRY=NGA"
    "&ADDR1=4358%20Delia%20Motorway&EMV=&Result=APPROVED&CUSTOMER_CODE=200454179879&AVS=4&CARD_TYPE=MC"
    "&EMV_APPLICATION=&CVV2_STATUS=1&OWNER_USER_ID=100553863406&F_CARD_PRESENT=0"
    "&LEVEL_2_DATA=customer_number%3D%26cust_po%3D%26&F_REBILL_MASTER=0&RRNO=200454179879&ORDER_ID=200454179879"
    "&F_UNHELD=0&PAYMENT_TYPE=CREDIT&CUST_EMAIL=Mandy.Donnelly84%40hotmail.com&EMAIL=Mandy.Donnelly84%40hotmail.com"
    "&F_BYPASS_AUTH=0&REBID=&AVS_RESULT=4&FLAGS=T&AMOUNT=9.00&ACCOUNT_NAME=DEMO-tokenex&ZIP=28253-2429"
    "&CONNECTED_IP=20.37.143.182&FANCY_STATUS=Approved&SOURCE_ID=200454179879&AUTH_CODE=RAYCJP&CVV2_RESULT=_"
    "&LOGIN_ACCOUNT_ID=100553863405&TRANS_ID=200454179879&STATUS=1&FRAUD_SCORE=0&MODE=TEST&TPS_HASH_TYPE=HMAC_SHA512"
    "&F_WILL_CAPTURE=0&TRANS_TYPE=SALE&EMV_APPNAME=&PROCESSOR_ID=100553863525&BINDATA=6~M~X~~~~~~~~MCG~N~~~Y~C"
    "&ISSUE_DATE=2023-11-30%2013%3A56%3A29.765734&BP_STAMP_DEF=RRNO%20ISSUE_DATE%20Result&AMOUNT_TAX=0.00"
    "&BP_STAMP=00ADC5DF02E0FF2DE4A29DB766D7761D7C8DC17528FC02FC725630C02048B8BA06CF3E4C35339851E5E676133124C1192"
    "93DE6D83E11F0421E5746A5EFB92408&STATE=Delaware&BACKEND_ID=084472311187&ORIG_IS_SETTLED=0&CVV2=_"
    "&INVOICE_ID=200454179879&COMPANY_NAME=Hermann%2C%20Ondricka%20and%20Thiel&COUNTRY=USA&ID=200454179879"
    "&BANK_NAME=ZENITH%20BANK&ORIGIN=bp10emu&CITY=South%20Kaitlin&MESSAGE=Approved%20Sale&CARD_EXPIRE=0325"
)

#: A VOID of that SALE, 2023-11-30 (MASTER_ID names the sale; its own ORDER_ID is the sale's).
APPROVED_VOID = (
    "/interfaces/wlcatch?COMPANY_NAME=Hermann%2C%20Ondricka%20and%20Thiel&MESSAGE=Approved%20Void&COUNTRY=USA"
    "&MASTER_ID=200454179879&EMV_APPNAME=&OWNER_USER_ID=100553863406&STATE=Delaware"
    "&BP_STAMP=26CBC552AD1145F2ED51A9E5177AA528EA05CC8EBA23DB18590820D67613AAC697DE9D5380B08F155105BEB218CF5E7D"
    "F269E413C2458A1974885D96616CB169&F_BYPASS_AUTH=0&F_REBILL_MASTER=0&ADDR1=4358%20Delia%20Motorway"
    "&PROCESSOR_ID=100553863525&CARD_EXPIRE=0325&CARD_TYPE=MC&FRAUD_SCORE=0&ORIG_AMOUNT=9.00&ORIGIN=bp10emu"
    "&BP_STAMP_DEF=RRNO%20ISSUE_DATE%20Result&EMAIL=Mandy.Donnelly84%40hotmail.com&ID=200454181409"
    "&CONNECTED_IP=20.37.143.182&Result=APPROVED&ORIG_TTYPE=SALE&CUST_EMAIL=Mandy.Donnelly84%40hotmail.com&REBID="
    "&ORDER_ID=200454179879&RRNO=200454181409&CVV2_RESULT=_&BINDATA=6~M~X~~~~~~~~MCG~N~~~Y~C"
    "&SOURCE_ID=200454179879&INVOICE_ID=200454179879&AVS_RESULT=4&CUSTOMER_CODE=200454181409&FLAGS=T"
    "&ORIG_IS_SETTLED=0&F_UNHELD=0&FANCY_STATUS=Approved&ZIP=28253-2429&AUTH_CODE=BARPUD&BACKEND_ID=706282844384"
    "&REMOTE_IP=20.37.143.182&TRANS_TYPE=VOID&STATUS=1&TPS_HASH_TYPE=HMAC_SHA512&AMOUNT_TAX=0.00"
    "&LEVEL_2_DATA=customer_number%3D%26cust_po%3D%26&ISSUE_DATE=2023-11-30%2013%3A57%3A22.106088"
    "&PAYMENT_ACCOUNT=xxxxxxxxxxxx5798&AMOUNT=9.00&LOGIN_ACCOUNT_ID=100553863405&F_CARD_PRESENT=0&CVV2=_"
    "&CVV2_STATUS=0&EMV=&CARD_COUNTRY=NGA&ACCOUNT_NAME=DEMO-tokenex&TRANS_ID=200454181409&PAYMENT_TYPE=CREDIT"
    "&MODE=TEST&AVS=4&BANK_NAME=ZENITH%20BANK&EMV_APPLICATION=&CITY=South%20Kaitlin&F_WILL_CAPTURE=0"
)

#: A declined AUTH, 2023-12-08 (an id like an approval; AUTH_CODE empty).
DECLINED_AUTH = (
    "/interfaces/wlcatch?RRNO=201043425078&EMV_APPLICATION=&ORIGIN=bp10emu&STATUS=0&OWNER_USER_ID=100553863406"
    "&CARD_COUNTRY=USA&AUTH_CODE=&CVV2_RESULT=_&EMV=&FANCY_STATUS=Declined&REBID=&STATE=Hawaii"
    "&INVOICE_ID=201043425078&LOGIN_ACCOUNT_ID=100553863405&F_CARD_PRESENT=0"
    "&ISSUE_DATE=2023-12-08%2016%3A19%3A29.43492&BANK_NAME=NETWORK%20ONLY&ORDER_ID=201043425078"
    "&CUSTOMER_CODE=201043425078&TRANS_ID=201043425078&AVS_RESULT=1&AMOUNT_TAX=0.00&ADDR1=173%20Antonio%20Pike"
    "&TPS_HASH_TYPE=HMAC_SHA512&BP_STAMP=E6CF795F48AA233440B640A4D508376836D1501EEB17CC5EEC76B53DBCA564E27326C0BD1"
    "513ED3CBFDBA96736F2B7EE0B479DDC91B80AFA8C384A715A578617&CVV2_STATUS=0&CUST_EMAIL=Mary0%40gmail.com"
    "&ZIP=96592-2764&COUNTRY=USA&PAYMENT_ACCOUNT=xxxxxxxxxxxx4448&EMAIL=Mary0%40gmail.com&CITY=Ornburgh"
    "&COMPANY_NAME=Franecki%2C%20Mertz%20and%20Conroy&AMOUNT=8.00&CONNECTED_IP=20.37.143.181&F_BYPASS_AUTH=0"
    "&FRAUD_SCORE=0&F_WILL_CAPTURE=0&PAYMENT_TYPE=CREDIT&REMOTE_IP=20.37.143.181"
    "&BP_STAMP_DEF=RRNO%20ISSUE_DATE%20Result&BACKEND_ID=887454904262&ORIG_IS_SETTLED=0&SOURCE_ID=201043425078"
    "&MESSAGE=Declined%20Auth&TRANS_TYPE=AUTH&ID=201043425078&F_UNHELD=0&Result=DECLINED&EMV_APPNAME=&MODE=TEST"
    "&AVS=1&FLAGS=T&CVV2=_&CARD_TYPE=MC&LEVEL_2_DATA=customer_number%3D%26cust_po%3D%26&CARD_EXPIRE=0324"
    "&ACCOUNT_NAME=DEMO-tokenex&PROCESSOR_ID=100553863525&F_REBILL_MASTER=0"
)

#: An ERROR (a card failing Luhn), 2023-12-08: stamped like the others, RRNO empty.
CARD_NOT_VALID = (
    "/interfaces/wlcatch?REBID=&Result=ERROR&PAYMENT_TYPE=CREDIT&STATE=Hawaii"
    "&COMPANY_NAME=Franecki%2C%20Mertz%20and%20Conroy&EMAIL=Mary0%40gmail.com&BP_STAMP_DEF=RRNO%20ISSUE_DATE%20Result"
    "&EMV_APPLICATION=&CARD_TYPE=&AMOUNT=9.00&PAYMENT_ACCOUNT=&ADDR1=173%20Antonio%20Pike&BANK_NAME=&STATUS=E"
    "&ORIGIN=bp10emu&CVV2=&CUST_EMAIL=Mary0%40gmail.com&LOGIN_ACCOUNT_ID=100553863405&MODE=TEST"
    "&REMOTE_IP=20.37.143.181&BP_STAMP=A0A2E1D9943C6D4DA24B4FB2F3B0CB25DA903F99A659C25168F4E8D5536629FF12730E3F0C2"
    "54539D573BC489D269DD7569CD28BAEC6E76E1F998058D9EF021B&ZIP=96592-2764&TPS_HASH_TYPE=HMAC_SHA512&RRNO="
    "&AMOUNT_TAX=0.00&TRANS_TYPE=AUTH&ORDER_ID=&AUTH_CODE=&INVOICE_ID=&F_CARD_PRESENT=0"
    "&MESSAGE=CARD%20ACCOUNT%20NOT%20VALID&CARD_EXPIRE=0324&EMV_APPNAME=&CITY=Ornburgh&OWNER_USER_ID=100553863406"
    "&EMV=&AVS="
)

#: name -> (Location, what a careful client must make of it: Result, MESSAGE, trans id, masked account)
BP10EMU_REPLIES = {
    "approved-auth": (APPROVED_AUTH, ("APPROVED", "Approved Auth", "200454159023", "xxxxxxxxxxxx4448")),
    "approved-sale": (APPROVED_SALE, ("APPROVED", "Approved Sale", "200454179879", "xxxxxxxxxxxx5798")),
    "approved-void": (APPROVED_VOID, ("APPROVED", "Approved Void", "200454181409", "xxxxxxxxxxxx5798")),
    "declined-auth": (DECLINED_AUTH, ("DECLINED", "Declined Auth", "201043425078", "xxxxxxxxxxxx4448")),
    "card-not-valid": (CARD_NOT_VALID, ("ERROR", "CARD ACCOUNT NOT VALID", "", "")),
}

# ------------------------------------------------------------------ stq (STQ_TEXT, BLUEPAY_PY)

#: One stq row as STQ_TEXT describes it: every standard output field, lower case, url-encoded pairs in the body,
#: no stamp. Values are the approved SALE above as stq would show it (issue_date is "yyyy-mm-dd hh:mm:ss").
STQ_ROW = {
    "id": "200454179879", "payment_type": "CREDIT", "trans_type": "SALE", "amount": "9.00", "card_type": "MC",
    "payment_account": "xxxxxxxxxxxx5798", "order_id": "200454179879", "invoice_id": "200454179879",
    "custom_id": "", "custom_id2": "", "master_id": "", "status": "1", "f_void": "", "message": "Approved Sale",
    "origin": "bp10emu", "issue_date": "2023-11-30 13:56:29", "settle_date": "", "rebilling_id": "",
    "settlement_id": "", "card_expire": "0325", "bank_name": "ZENITH BANK", "addr1": "4358 Delia Motorway",
    "addr2": "", "city": "South Kaitlin", "state": "Delaware", "zip": "28253-2429", "phone": "",
    "email": "Mandy.Donnelly84@hotmail.com", "auth_code": "RAYCJP", "name1": "", "name2": "",
    "company_name": "Hermann, Ondricka and Thiel", "memo": "", "backend_id": "084472311187",
    "remote_ip": "20.37.143.182", "avs_result": "4", "cvv_result": "_", "merchdata": "", "card_present": "0",
}

#: name -> (HTTP status, body, what a client must make of it). "absent" is our documented convention for an empty
#: 200 (docs/bluepay.md); every other reply the sources leave open must be "cannot tell", never "absent".
STQ_REPLIES = {
    "row-lower-case": (200, urlencode(STQ_ROW), ("found", "APPROVED", "200454179879")),
    # BLUEPAY_PY reads ID, TRANS_TYPE, AMOUNT, STATUS, NAME1... from an stq reply: upper-case names
    "row-upper-case": (200, urlencode({k.upper(): v for k, v in STQ_ROW.items()}),
                       ("found", "APPROVED", "200454179879")),
    "declined-row": (200, urlencode(dict(STQ_ROW, status="0", message="Declined Sale")),
                     ("found", "DECLINED", "200454179879")),
    "empty-200": (200, "", ("absent", None, None)),
    "html-error-page": (200, "<html><body>Service Unavailable</body></html>", ("cannot_tell", None, None)),
    "status-e-400": (400, "STATUS=E&MESSAGE=SECURITY%20ERROR", ("rejected", None, None)),
    # REPORT_TEXT's refusal shape (stq's text is silent): read as a refusal naming its reason, never "absent"
    "line-400": (400, "SECURITY ERROR\n", ("rejected", None, None)),
    "blank-row": (200, urlencode(dict.fromkeys(STQ_ROW, "")), ("cannot_tell", None, None)),
    "http-500": (500, "", ("cannot_tell", None, None)),
}

# ------------------------------------------------------------------ bpdailyreport2 (REPORT_TEXT)

#: The header and two lines as REPORT_TEXT describes them: version 1 fields in its order, commas inside values
#: escaped with a backslash ("',' becomes '\\,'"), dates "yyyy-mm-dd hh:mm:ss".
REPORT_HEADER = ("id,payment_type,trans_type,amount,card_type,payment_account,order_id,invoice_id,custom_id,"
                 "custom_id2,master_id,status,f_void,message,origin,issue_date,settle_date,rebilling_id,"
                 "settlement_id,card_expire,bank_name,addr1,addr2,city,state,zip,memo,phone,email,auth_code,name1,"
                 "name2,company_name,backend_id")
REPORT_BODY = "\n".join([
    REPORT_HEADER,
    "200454179879,CREDIT,SALE,9.00,MC,xxxxxxxxxxxx5798,200454179879,200454179879,,,,1,,Approved Sale,bp10emu,"
    "2023-11-30 13:56:29,,,,0325,ZENITH BANK,4358 Delia Motorway,,South Kaitlin,Delaware,28253-2429,,,"
    "Mandy.Donnelly84@hotmail.com,RAYCJP,,,Hermann\\, Ondricka and Thiel,084472311187",
    "200454181409,CREDIT,VOID,9.00,MC,xxxxxxxxxxxx5798,200454179879,200454179879,,,200454179879,1,1,Approved Void,"
    "bp10emu,2023-11-30 13:57:22,,,,0325,ZENITH BANK,4358 Delia Motorway,,South Kaitlin,Delaware,28253-2429,,,"
    "Mandy.Donnelly84@hotmail.com,BARPUD,,,Hermann\\, Ondricka and Thiel,706282844384",
]) + "\n"
#: REPORT_TEXT: "If failed, the output will contain only a single line, containing a message" (HTTP 400).
REPORT_ERROR = (400, "SECURITY ERROR\n")


# ------------------------------------------------------------------ helpers (independent of worker.gateway)

def pairs_of(location: str) -> dict[str, str]:
    return dict(parse_qsl(location.partition("?")[2], keep_blank_values=True))


def hmac_sha512(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha512).hexdigest().upper()


def restamped(location: str, secret: str) -> str:
    """The same Location with its BP_STAMP made with ``secret`` by its own BP_STAMP_DEF (HMAC_SHA512, as sent)."""
    pairs = pairs_of(location)
    message = "".join(pairs.get(name, "") for name in pairs["BP_STAMP_DEF"].split())
    pairs["BP_STAMP"] = hmac_sha512(secret, message)
    return location.partition("?")[0] + "?" + urlencode(pairs)
