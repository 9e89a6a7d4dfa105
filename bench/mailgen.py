"""Deterministic generator of realistic help-desk mail, for benchmarks.

`generate(n, seed)` returns `n` raw messages (bytes, as they would sit in a
Maildir): employees at a few example.com/example.org domains writing to
support@example.com about everyday IT problems. The mix, chosen to look like a
real support mailbox rather than a best case:

* most mails are multipart/alternative (text + HTML in the sender's client
  style: bloated Outlook HTML, Gmail divs, Apple Mail, Thunderbird), some are
  plain text only, some HTML only;
* about a third are replies to an earlier generated mail: `Re:` subject,
  `In-Reply-To`/`References`, and the quoted history below an "On ... wrote:"
  line (Outlook: below a "From:/Sent:" block). Half of the Outlook replies
  carry only the `[#N]` ticket tag and `In-Reply-To`, no `References`;
  ticket numbers are predicted from arrival order (ticket N is the Nth mail
  that starts a thread, as in a fresh store);
* a tenth carry an attachment: a PDF- or PNG-like random blob of 20-200 KB,
  or a small log file;
* realistic headers: Received chain, Return-Path, Authentication-Results,
  Message-ID in each client's format, X-Mailer/User-Agent, non-ASCII
  display names, sometimes Cc.

Same `seed`, same bytes: nothing reads the clock, the host name or os.urandom.
Run it directly to see a summary: `python bench/mailgen.py 200`.
"""

from __future__ import annotations

import base64
import html
import random
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

SUPPORT = Address("IT Support", "support", "example.com")
MX = "mx1.example.com"

REPLY_SHARE = 1 / 3
ATTACHMENT_SHARE = 0.10
HTML_ONLY_SHARE = 0.07
PLAIN_ONLY_SHARE = 0.06  # besides Thunderbird users, who often write plain text
MAX_THREAD_LENGTH = 6
RECENT_THREADS = 60  # people answer recent threads, not last year's
MAX_QUOTED_CHARS = 7000
# Fold headers at 120 columns, not 78: the standard library encodes a token it
# cannot fit on a line (Outlook's 85-character Message-IDs in In-Reply-To) as
# an RFC 2047 word, which no real mailer does.
OUTPUT_POLICY = policy.default.clone(max_line_length=120)

# (display, ascii local part) pairs; the display names include non-ASCII letters.
FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("Anna", "anna"), ("Ben", "ben"), ("Chloé", "chloe"), ("Daniel", "daniel"),
    ("Émilie", "emilie"), ("Fatima", "fatima"), ("Grace", "grace"), ("Hannah", "hannah"),
    ("Ivan", "ivan"), ("José", "jose"), ("Katarzyna", "katarzyna"), ("Lars", "lars"),
    ("Łukasz", "lukasz"), ("Maria", "maria"), ("Nils", "nils"), ("Olivia", "olivia"),
    ("Priya", "priya"), ("Rafael", "rafael"), ("Søren", "soren"), ("Tomás", "tomas"),
    ("Ursula", "ursula"), ("Zoë", "zoe"), ("Björn", "bjorn"), ("Mehmet", "mehmet"),
)
LAST_NAMES: tuple[tuple[str, str], ...] = (
    ("Müller", "mueller"), ("Smith", "smith"), ("Dubois", "dubois"), ("García", "garcia"),
    ("Kowalski", "kowalski"), ("Nørgaard", "norgaard"), ("O'Brien", "obrien"),
    ("Rossi", "rossi"), ("Schäfer", "schaefer"), ("Wójcik", "wojcik"), ("Johnson", "johnson"),
    ("Öztürk", "ozturk"), ("Lindqvist", "lindqvist"), ("Patel", "patel"), ("Weber", "weber"),
    ("Fernández", "fernandez"), ("Nakamura", "nakamura"), ("Brown", "brown"),
)
# Names not written in Latin script: (display, local part).
OTHER_SCRIPT_NAMES: tuple[tuple[str, str], ...] = (
    ("王芳", "fang.wang"), ("田中 太郎", "taro.tanaka"), ("Ελένη Παππά", "eleni.pappa"),
    ("Дмитрий Иванов", "dmitry.ivanov"), ("김민준", "minjun.kim"),
)
DOMAINS: tuple[str, ...] = ("example.com", "example.org", "corp.example.com", "eu.example.org")
CLIENTS: tuple[str, ...] = ("outlook", "gmail", "apple", "thunderbird")
CLIENT_WEIGHTS: tuple[int, ...] = (50, 25, 15, 10)
TIMEZONES: tuple[timezone, ...] = (
    timezone(timedelta(hours=2)), timezone(timedelta(hours=1)), timezone(timedelta(hours=-4)),
    timezone(timedelta(hours=9)), UTC,
)
TITLES: tuple[str, ...] = (
    "Financial Controller", "Senior Accountant", "HR Business Partner", "Sales Manager DACH",
    "Marketing Specialist", "Project Engineer", "Office Manager", "Data Analyst",
    "Procurement Lead", "Customer Success Manager", "Legal Counsel", "Product Designer",
)
DEPARTMENTS: tuple[str, ...] = (
    "Finance", "Human Resources", "Sales", "Marketing", "Engineering", "Facilities",
    "Business Intelligence", "Procurement", "Customer Success", "Legal", "Design",
)
OFFICES: tuple[str, ...] = ("Berlin", "Lyon", "Boston", "Kraków", "Copenhagen", "Tokyo", "Madrid")
MODELS: tuple[str, ...] = (
    "Dell Latitude 7440", "Lenovo ThinkPad T14 Gen 4", 'MacBook Pro 14" (M3, 2023)',
    "HP EliteBook 840 G10", "Lenovo ThinkPad X1 Carbon Gen 11", "Dell Precision 5680",
)
SYSTEMS: tuple[str, ...] = (
    "SAP", "Salesforce", "the finance share (\\\\fs01\\finance)", "the HR SharePoint site",
    "Jira project FIN", "the Tableau server", "the contracts database", "Workday",
)
APPS: tuple[str, ...] = (
    "Adobe Acrobat Pro", "Visual Studio Code", "Tableau Desktop", "AutoCAD LT 2024",
    "Microsoft Visio", "SAP GUI 8.0", "Python 3.12", "Power BI Desktop", "Miro",
)
WHEN: tuple[str, ...] = (
    "this morning", "yesterday afternoon", "the update on Tuesday", "Monday",
    "about an hour ago", "I came back from holiday", "last week", "the weekend",
)
VPN_ERRORS: tuple[str, ...] = (
    "The network connection is unreachable or the gateway is unresponsive (error 0x1002)",
    "Authentication failed: invalid username or password (SAML response rejected)",
    "Gateway vpn-eu.example.com: tunnel could not be established, retrying in 30 s",
    "Certificate validation failed: the server certificate is not yet valid",
)


@dataclass(frozen=True)
class Person:
    """An employee: who writes, from which client, with which signature."""

    name: str
    local: str
    domain: str
    client: str
    title: str
    department: str
    office: str
    phone: str
    tz: timezone

    @property
    def address(self) -> Address:
        return Address(self.name, self.local, self.domain)

    @property
    def email(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class Topic:
    """An IT problem: subjects, paragraphs of the first mail, follow-up lines."""

    subjects: tuple[str, ...]
    paragraphs: tuple[str, ...]
    followups: tuple[str, ...]


@dataclass
class Sent:
    """A generated mail that later mails may quote and answer."""

    message_id: str
    author: Person
    date: datetime
    subject: str
    text: str
    html_body: str


@dataclass
class Thread:
    """A conversation; `ticket` is the number the help desk will give it."""

    ticket: int
    topic: Topic
    subject: str
    requester: Person
    cc: tuple[Person, ...]
    facts: dict[str, str]
    mails: list[Sent] = field(default_factory=list)


TOPICS: tuple[Topic, ...] = (
    Topic(
        subjects=("VPN keeps disconnecting", "Cannot connect to VPN from home",
                  "GlobalProtect: gateway not responding", "VPN very slow since {when}"),
        paragraphs=(
            "Since {when} my VPN connection drops every 10 to 15 minutes. GlobalProtect shows "
            "\"Connected\" and then suddenly switches to \"Disconnected\" without any message, "
            "and I have to reconnect by hand each time. This makes it almost impossible to stay "
            "in Teams calls or to keep a remote desktop session open for more than a few minutes.",
            "I am working from home this week. The internet connection itself is fine (a speed "
            "test gives about 250 Mbit/s down and 40 up), and the other devices in the house "
            "keep working while the VPN is down, so I do not think it is my router.",
            "The client shows this error: \"{vpn_error}\". I already tried restarting the "
            "laptop, signing out and back in, and switching from Wi-Fi to a cable, but nothing "
            "changed.",
            "A colleague in my team ({colleague}) seems to have the same problem, so maybe it is "
            "something on the gateway side rather than on my machine?",
            "Could you please have a look? I need {system} for the month-end closing, so it is "
            "fairly urgent for me.",
        ),
        followups=(
            "It dropped again twice this morning, each time after roughly ten minutes.",
            "I reinstalled the GlobalProtect client as described on the intranet page; same "
            "behaviour.",
            "It only seems to happen on the {ssid} network, at home with a cable it is stable.",
        ),
    ),
    Topic(
        subjects=("Printer on {floor} floor not working", "Cannot print to {printer}",
                  "Print jobs stuck in queue", "Printer shows paper jam but there is none"),
        paragraphs=(
            "The printer {printer} on the {floor} floor stopped printing {when}. My jobs show as "
            "\"Sent to printer\" in the queue, but nothing comes out and after a while they "
            "disappear from the list.",
            "The display on the printer says \"Paper jam in tray 2\", but we opened every tray "
            "and the back door and there is no paper stuck anywhere. Switching it off and on "
            "again did not clear the message.",
            "Other people on the floor have the same problem, so it is not just my laptop. We "
            "are using the printer on the {other_floor} floor for now, but that is a long walk "
            "with confidential documents.",
            "I also tried removing the printer in Settings and adding it again via "
            "\\\\print01\\{printer}; Windows finds it but every test page fails with "
            "\"Error - Printing\".",
            "We have the board pack to print on Thursday, so it would be great if someone could "
            "come by before then.",
        ),
        followups=(
            "The printer now prints, but only black and white: colour jobs are still stuck.",
            "Someone from facilities came by and restarted it, but the error is back.",
            "Thanks, the technician replaced the fuser and everything works again.",
        ),
    ),
    Topic(
        subjects=("Password reset", "Account locked out", "Cannot log in after password change",
                  "Password expired while travelling"),
        paragraphs=(
            "My account was locked {when}. I changed my password on the laptop as requested by "
            "the expiry reminder, and since then I cannot log in to Outlook on my phone or to "
            "{system}; after a few attempts the account is locked again.",
            "I think the phone still tries the old password in the background. I removed the "
            "mail account from the phone, but I can only do that once I am able to log in "
            "again, so I am a bit stuck.",
            "I am at a customer site in {office} until Friday and can only reach you by e-mail "
            "from my private phone. Could you please unlock the account and, if needed, send a "
            "temporary password to my manager {colleague}?",
            "For verification: my employee number is {employee_no} and my laptop asset tag is "
            "{asset}.",
        ),
        followups=(
            "I can log in again, thank you! The phone also picked up the new password.",
            "The temporary password does not work, it says \"The user name or password is "
            "incorrect\".",
            "It locked again an hour ago. I have now removed the account from my tablet too.",
        ),
    ),
    Topic(
        subjects=("Laptop very slow", "Laptop screen flickering", "Laptop battery drains fast",
                  "Laptop does not start", "Replacement laptop request"),
        paragraphs=(
            "My laptop ({model}, asset tag {asset}) has become extremely slow since {when}. It "
            "takes about ten minutes to boot and Outlook freezes for a minute each time a new "
            "mail arrives. The fan is running at full speed even when nothing is open.",
            "Task Manager shows \"Antimalware Service Executable\" at 30-40% CPU and the disk at "
            "100% most of the time. I have about 40 GB free on the disk.",
            "The screen also flickers when I connect the docking station, and the external "
            "monitor goes black for a second every few minutes. The same dock works fine with a "
            "colleague's laptop.",
            "The laptop is almost four years old, so maybe it is time for a replacement? I work "
            "a lot with large Excel models and {app}, and it is really slowing me down.",
            "I can bring it to the IT desk in {office} any day this week between 10:00 and "
            "16:00, except Wednesday afternoon.",
        ),
        followups=(
            "I ran the Windows updates as you suggested and restarted twice; it is a little "
            "better but still very slow.",
            "I dropped the laptop off at the IT desk this morning. Do you know when it will be "
            "ready?",
            "The new laptop arrived, thank you. Could you also move my files from the old one?",
        ),
    ),
    Topic(
        subjects=("Software install request: {app}", "Please install {app}",
                  "Need admin rights to install {app}", "{app} licence"),
        paragraphs=(
            "Could you please install {app} on my laptop ({asset})? I need it for the new "
            "reporting project that starts next month; my manager {colleague} has approved it "
            "(in copy).",
            "I tried to install it from the Company Portal, but it is not in the catalogue, and "
            "the installer from the vendor's website asks for administrator rights.",
            "If a licence is needed, the cost centre is {cost_centre}. A named-user licence is "
            "enough; I will be the only one using it.",
            "If possible I would like the current version rather than the one from last year, "
            "because the file format changed and our partner sends us files in the new format.",
        ),
        followups=(
            "Just checking: has the licence been approved? The project starts on Monday.",
            "The installation finished, but it asks for a licence key when I start it.",
            "Works perfectly now, thanks a lot for the quick help.",
        ),
    ),
    Topic(
        subjects=("Access request: {system}", "Need access to {system}",
                  "Permission denied on {system}", "Access for new team member"),
        paragraphs=(
            "I need read and write access to {system}. I moved to the {department} team "
            "{when}, and I am now responsible for the supplier contracts, but when I open the "
            "folder I get \"Access denied\".",
            "My new manager {colleague} is in copy and can confirm. The previous owner of these "
            "tasks has left the company, so there is nobody else who can do them at the "
            "moment.",
            "Could you also remove my access to the old Sales folders? I do not need them "
            "anymore and I would rather not have access to data I should not see.",
            "Our auditors arrive in two weeks and need the documents from this folder, so I "
            "would be grateful if this could be done this week.",
        ),
        followups=(
            "I can open the folder now, but I cannot save files in it (read-only).",
            "My manager approved the request in the portal this morning.",
            "Access works now, thank you. You can close this.",
        ),
    ),
    Topic(
        subjects=("Wi-Fi not working in meeting room", "Cannot connect to {ssid}",
                  "Wi-Fi drops in {office} office", "Guest Wi-Fi for visitors tomorrow"),
        paragraphs=(
            "The Wi-Fi in the meeting rooms on the {floor} floor in {office} has been very "
            "unreliable since {when}. Laptops connect to {ssid} but get no IP address, or the "
            "connection drops after a few minutes.",
            "It happens with Windows laptops and MacBooks alike, and also with phones, so it "
            "does not seem to be a problem with one device. In the open-plan area next to the "
            "rooms it works fine.",
            "We have external visitors tomorrow from 9:00 to 17:00 (about 12 people). Could you "
            "please create guest Wi-Fi access for them, or tell me how I can do that myself?",
            "I restarted the laptop and forgot and re-added the network; Windows says \"Can't "
            "connect to this network\".",
        ),
        followups=(
            "Still no Wi-Fi in room {room} this morning; we moved the workshop to the canteen.",
            "The guest vouchers arrived, thank you. Do they also work on Saturday?",
            "Since the access point was replaced it is stable, thanks.",
        ),
    ),
    Topic(
        subjects=("Mailbox full", "Mailbox almost full - please increase quota",
                  "Cannot send e-mails: mailbox quota exceeded", "Archive for old e-mails"),
        paragraphs=(
            "Outlook tells me that my mailbox is full ({quota}) and that I can no longer send "
            "messages. I have already deleted a lot of old mails and emptied the Deleted Items "
            "folder, but it did not help much.",
            "Most of the space is taken by attachments from project {project}, which I need to "
            "keep for at least seven years for compliance reasons. Is there an archive mailbox "
            "I could move them to?",
            "Could you increase my quota, at least temporarily? I am expecting the final "
            "contracts from the customer this week and cannot afford to miss them.",
            "When I open the archive settings in Outlook, the online archive option is greyed "
            "out, so I think it has not been enabled for my account.",
        ),
        followups=(
            "I can send again, thanks. How much space do I have now?",
            "The online archive appeared in Outlook, but moving folders into it fails with "
            "\"The operation failed\".",
            "The warning is back: {quota} again after the weekend.",
        ),
    ),
    Topic(
        subjects=("New phone - MFA setup", "Lost my phone, cannot sign in",
                  "Authenticator app not showing requests", "MFA prompt loop"),
        paragraphs=(
            "I got a new phone {when} and forgot to move the Authenticator app before resetting "
            "the old one. Now I cannot approve the sign-in requests, so I cannot log in to "
            "anything outside the office network.",
            "Could you please reset my MFA registration so that I can set it up again on the "
            "new phone? I am in the {office} office today and can come to the IT desk if you "
            "need to check my ID.",
            "The sign-in page keeps showing \"Approve sign in request\" and then \"We didn't "
            "hear from you\" after a minute; no notification arrives on the phone.",
            "For verification: my employee number is {employee_no}, my manager is "
            "{colleague}.",
        ),
        followups=(
            "I set up the app again and the notifications work now, thank you.",
            "The QR code on the setup page says it has expired; can you reset it once more?",
            "I am at the IT desk now but nobody is here, when is someone back?",
        ),
    ),
    Topic(
        subjects=("New starter on {date_hint}: account and laptop", "Onboarding: {new_name}",
                  "Equipment for new employee", "Accounts for intern starting Monday"),
        paragraphs=(
            "{new_name} joins my team as {title} on {date_hint}. Could you please prepare a "
            "laptop, an account and a phone? The contract has been signed and HR should have "
            "created the record in Workday already.",
            "{new_name} will need access to {system}, the team's shared mailbox and the Teams "
            "channels of the {department} department. A second monitor and a headset would "
            "also be good.",
            "The first day starts at 9:00 in the {office} office; I will pick them up at the "
            "reception. Ideally the laptop would be ready the evening before so that we can "
            "start right away.",
            "Please let me know if you need anything else from me (cost centre is "
            "{cost_centre}).",
        ),
        followups=(
            "Is the laptop ready? The first day is tomorrow.",
            "The account works, but {new_name} cannot open the shared mailbox yet.",
            "Everything was ready on the first day, thanks to the whole team!",
        ),
    ),
    Topic(
        subjects=("Teams meeting room display not working", "Cannot share screen in Teams",
                  "Docking station not recognised", "Second monitor stays black"),
        paragraphs=(
            "The display in meeting room {room} does not show anything when we connect a laptop "
            "with the HDMI cable; the Teams Room panel on the table shows \"No signal\".",
            "In Teams, when I try to share my screen, the other participants only see a black "
            "window. Sharing a single window works, but the whole screen does not.",
            "My docking station (Dell WD19) is no longer recognised since {when}: the laptop "
            "charges, but the monitors, keyboard and network cable on the dock do not work.",
            "We have a customer presentation in that room at 14:00, so it would be great if "
            "someone could check it before lunch.",
        ),
        followups=(
            "The room works again after the restart, thanks, but the camera is upside down.",
            "The firmware update fixed the dock. The second monitor still flickers though.",
            "Any update? We have another meeting in the room this afternoon.",
        ),
    ),
)

GREETINGS: tuple[str, ...] = (
    "Hi,", "Hello,", "Hi IT team,", "Hello support,", "Dear IT Support,", "Good morning,",
    "Hi all,", "Hallo zusammen,", "Bonjour,",
)
CLOSINGS: tuple[str, ...] = (
    "Thanks in advance,", "Many thanks,", "Best regards,", "Kind regards,", "Thank you!",
    "Cheers,", "Viele Grüße,", "Merci et bonne journée,", "Thanks,",
)
EXTRA_PARAGRAPHS: tuple[str, ...] = (
    "For reference: laptop {model}, asset tag {asset}, running {os}. I sit in the {office} "
    "office, {floor} floor, desk {desk}.",
    "I attached the screenshot / log file in case it helps. Please let me know if you need "
    "anything else from me or if someone should call me; I am available today until 18:00 on "
    "{phone}.",
    "Sorry if this is the wrong address for this kind of request - the intranet page still "
    "mentions the old ticket portal, which does not seem to exist anymore.",
    "This is quite urgent because I have an external deadline on Friday and several people in "
    "my team depend on me for it.",
)
FOLLOWUP_OPENERS: tuple[str, ...] = (
    "Hi,", "Hello again,", "Hi, a quick follow-up:", "Thanks for getting back to me.",
    "Hi, any news on this?", "Hello,",
)
FOLLOWUP_EXTRAS: tuple[str, ...] = (
    "If it is easier to look at it together, I am at my desk until 17:00 today; you can call "
    "me on {phone}.",
    "My colleague {colleague} asked me to mention that it affects her too.",
    "Sorry for chasing, I know you are busy - it is just that the deadline is close.",
)
DISCLAIMER = (
    "CONFIDENTIALITY NOTICE: This e-mail and any attachments are confidential and may be "
    "legally privileged. They are intended solely for the use of the addressee. If you have "
    "received this e-mail in error, please notify the sender immediately by reply and delete "
    "it from your system; you must not copy, forward, disclose or otherwise use it or any part "
    "of it. E-mail transmission cannot be guaranteed to be secure or error-free. Example Org "
    "Ltd, registered in England and Wales, company number 01234567, registered office: 1 "
    "Example Street, London EC1A 1AA."
)
DISCLAIMER_DE = (
    "VERTRAULICHKEITSHINWEIS: Diese E-Mail und ihre Anhänge sind vertraulich. Wenn Sie nicht "
    "der richtige Adressat sind oder diese E-Mail irrtümlich erhalten haben, informieren Sie "
    "bitte sofort den Absender und vernichten Sie diese E-Mail. Das unerlaubte Kopieren sowie "
    "die unbefugte Weitergabe dieser E-Mail sind nicht gestattet. Example Europe GmbH, Sitz: "
    "Berlin, Amtsgericht Charlottenburg HRB 123456, Geschäftsführung: Jürgen Groß."
)

OUTLOOK_HEAD = """<html xmlns:v="urn:schemas-microsoft-com:vml" \
xmlns:o="urn:schemas-microsoft-com:office:office" \
xmlns:w="urn:schemas-microsoft-com:office:word" \
xmlns:m="http://schemas.microsoft.com/office/2004/12/omml" \
xmlns="http://www.w3.org/TR/REC-html40">
<head>
<meta http-equiv="Content-Type" content="text/html; charset=utf-8">
<meta name="Generator" content="Microsoft Word 15 (filtered medium)">
<style><!--
/* Font Definitions */
@font-face
\t{font-family:"Cambria Math";
\tpanose-1:2 4 5 3 5 4 6 3 2 4;}
@font-face
\t{font-family:Calibri;
\tpanose-1:2 15 5 2 2 2 4 3 2 4;}
@font-face
\t{font-family:Aptos;}
/* Style Definitions */
p.MsoNormal, li.MsoNormal, div.MsoNormal
\t{margin:0cm;
\tfont-size:11.0pt;
\tfont-family:"Aptos",sans-serif;
\tmso-ligatures:standardcontextual;
\tmso-fareast-language:EN-US;}
a:link, span.MsoHyperlink
\t{mso-style-priority:99;
\tcolor:#467886;
\ttext-decoration:underline;}
span.EmailStyle17
\t{mso-style-type:personal-compose;
\tfont-family:"Aptos",sans-serif;
\tcolor:windowtext;}
.MsoChpDefault
\t{mso-style-type:export-only;
\tfont-size:10.0pt;
\tmso-ligatures:none;}
@page WordSection1
\t{size:612.0pt 792.0pt;
\tmargin:72.0pt 72.0pt 72.0pt 72.0pt;}
div.WordSection1
\t{page:WordSection1;}
--></style><!--[if gte mso 9]><xml>
<o:shapedefaults v:ext="edit" spidmax="1026" />
</xml><![endif]--><!--[if gte mso 9]><xml>
<o:shapelayout v:ext="edit">
<o:idmap v:ext="edit" data="1" />
</o:shapelayout></xml><![endif]-->
</head>
<body lang="EN-GB" link="#467886" vlink="#96607D" style="word-wrap:break-word">
<div class="WordSection1">
"""


def generate(n: int, seed: int = 1) -> list[bytes]:
    """`n` raw help-desk mails, the same bytes for the same `seed`."""
    return _Generator(random.Random(seed)).run(n)


class _Generator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.people = _make_people(rng)
        self.threads: list[Thread] = []
        self.clock = datetime(2024, 6, 3, 7, 30, tzinfo=UTC)

    def run(self, n: int) -> list[bytes]:
        return [self.next_mail() for _ in range(n)]

    def next_mail(self) -> bytes:
        rng = self.rng
        self.clock += timedelta(seconds=rng.randint(20, 600))
        open_threads = [
            t for t in self.threads[-RECENT_THREADS:] if len(t.mails) < MAX_THREAD_LENGTH
        ]
        if open_threads and rng.random() < REPLY_SHARE:
            return self.reply(rng.choice(open_threads))
        return self.first_mail()

    # -- mail that starts a thread ---------------------------------------------------

    def first_mail(self) -> bytes:
        rng = self.rng
        requester = rng.choice(self.people)
        cc = tuple(
            rng.sample([p for p in self.people if p != requester], k=rng.choice((1, 1, 2)))
        ) if rng.random() < 0.3 else ()
        topic = rng.choice(TOPICS)
        facts = self.facts(requester)
        subject = rng.choice(topic.subjects).format(**facts)
        thread = Thread(len(self.threads) + 1, topic, subject, requester, cc, facts)
        self.threads.append(thread)

        picked = rng.sample(topic.paragraphs, k=min(len(topic.paragraphs), rng.randint(2, 4)))
        if rng.random() < 0.6:
            picked.append(rng.choice(EXTRA_PARAGRAPHS))
        paragraphs = [rng.choice(GREETINGS), *(p.format(**facts) for p in picked)]
        if rng.random() < 0.15:
            paragraphs.append(_log_excerpt(rng, self.clock, rng.randint(6, 25)))
        return self.compose(thread, requester, subject, paragraphs, parent=None)

    # -- replies -----------------------------------------------------------------------

    def reply(self, thread: Thread) -> bytes:
        rng = self.rng
        author = thread.requester
        if thread.cc and rng.random() < 0.25:
            author = rng.choice(thread.cc)
        parent = thread.mails[-1] if rng.random() < 0.8 else rng.choice(thread.mails)
        paragraphs = [
            rng.choice(FOLLOWUP_OPENERS),
            rng.choice(thread.topic.followups).format(**thread.facts),
        ]
        if rng.random() < 0.3:
            paragraphs.append(rng.choice(FOLLOWUP_EXTRAS).format(**thread.facts))
        prefix = "RE: " if author.client == "outlook" else "Re: "
        tag_only = author.client == "outlook" and rng.random() < 0.5
        subject = prefix + (f"[#{thread.ticket}] " if tag_only else "") + thread.subject
        return self.compose(thread, author, subject, paragraphs, parent=parent, tag_only=tag_only)

    # -- assembling one message ----------------------------------------------------------

    def compose(
        self,
        thread: Thread,
        author: Person,
        subject: str,
        paragraphs: list[str],
        *,
        parent: Sent | None,
        tag_only: bool = False,
    ) -> bytes:
        rng = self.rng
        date = self.clock.astimezone(author.tz)
        message_id = _message_id(rng, author)
        signature = _signature(author, full=parent is None or rng.random() < 0.5)
        closing = rng.choice(CLOSINGS)
        new_text = "\n\n".join([*paragraphs, closing, signature])
        new_html = _html_paragraphs(author.client, [*paragraphs, closing, signature])
        if parent is not None:
            text = new_text + "\n\n" + _quote_text(author.client, parent)
            html_body = new_html + _quote_html(author.client, parent)
        else:
            text, html_body = new_text, new_html
        text += _disclaimer(author)

        msg = EmailMessage()
        self.transport_headers(msg, author, date)
        msg["From"] = author.address
        msg["To"] = SUPPORT
        others = [p for p in (thread.requester, *thread.cc) if p != author]
        if others:
            msg["Cc"] = [p.address for p in others]
        msg["Subject"] = subject
        msg["Date"] = format_datetime(date)
        msg["Message-ID"] = message_id
        if parent is not None:
            msg["In-Reply-To"] = parent.message_id
            if not tag_only:
                chain = [m.message_id for m in thread.mails[-9:]]
                if parent.message_id not in chain:
                    chain.append(parent.message_id)
                msg["References"] = " ".join(chain)
        _client_headers(msg, rng, author, subject)
        self.set_body(msg, author.client, text, html_body)
        if rng.random() < ATTACHMENT_SHARE:
            _attach(msg, rng, author, self.clock)

        _set_boundaries(msg, rng, author.client)
        thread.mails.append(Sent(message_id, author, date, subject, text, html_body))
        return msg.as_bytes(policy=OUTPUT_POLICY)

    def set_body(self, msg: EmailMessage, client: str, text: str, html_body: str) -> None:
        rng = self.rng
        roll = rng.random()
        plain_only = roll < PLAIN_ONLY_SHARE or (client == "thunderbird" and roll < 0.5)
        if plain_only:
            msg.set_content(text)
        elif roll > 1 - HTML_ONLY_SHARE:
            msg.set_content(_html_document(client, html_body), subtype="html")
        else:
            msg.set_content(text)
            msg.add_alternative(_html_document(client, html_body), subtype="html")

    def transport_headers(self, msg: EmailMessage, author: Person, date: datetime) -> None:
        rng = self.rng
        arrived = format_datetime(self.clock + timedelta(seconds=rng.randint(1, 40)))
        sent = format_datetime(date)
        queue_id = "".join(rng.choices("0123456789ABCDEFGHJKLMNPQRSTVWXYZ", k=11))
        for line in _received_chain(rng, author, queue_id, arrived, sent):
            msg["Received"] = line
        msg["Return-Path"] = f"<{author.email}>"
        msg["Delivered-To"] = "support@example.com"
        msg["Authentication-Results"] = (
            f"{MX}; dkim=pass header.d={author.domain} header.s=selector1; "
            f"spf=pass smtp.mailfrom={author.email}; dmarc=pass header.from={author.domain}"
        )

    def facts(self, requester: Person) -> dict[str, str]:
        rng = self.rng
        floors = ("2nd", "3rd", "4th", "5th", "ground")
        floor, other_floor = rng.sample(floors, 2)
        first, _ = rng.choice(FIRST_NAMES)
        last, _ = rng.choice(LAST_NAMES)
        colleague = rng.choice([p for p in self.people if p != requester])
        office = requester.office
        return {
            "when": rng.choice(WHEN),
            "vpn_error": rng.choice(VPN_ERRORS),
            "colleague": colleague.name,
            "system": rng.choice(SYSTEMS),
            "app": rng.choice(APPS),
            "ssid": rng.choice(("EX-CORP", "EX-CORP-5G", "EX-GUEST")),
            "floor": floor,
            "other_floor": other_floor,
            "printer": f"PRN-{office[:3].upper()}-{floor[0].upper()}F-0{rng.randint(1, 4)}",
            "office": office,
            "model": rng.choice(MODELS),
            "os": rng.choice(("Windows 11 23H2", "Windows 11 22H2", "macOS Sonoma 14.5")),
            "asset": f"LT-{rng.randint(10000, 99999)}",
            "desk": f"{rng.randint(1, 5)}.{rng.randint(10, 80)}",
            "phone": requester.phone,
            "employee_no": str(rng.randint(100000, 999999)),
            "cost_centre": f"CC-{rng.randint(1000, 9999)}",
            "department": rng.choice(DEPARTMENTS),
            "quota": f"{rng.uniform(49.0, 50.0):.1f} GB of 50 GB",
            "project": rng.choice(("Aurora", "Nordlicht", "Phoenix", "Kestrel", "Mistral")),
            "room": rng.choice(("Everest", "K2", "Matterhorn", "Zugspitze", "Mont Blanc")),
            "new_name": f"{first} {last}",
            "title": rng.choice(TITLES),
            "date_hint": rng.choice(("Monday", "1 July", "the 15th", "next Tuesday")),
        }


def _make_people(rng: random.Random) -> list[Person]:
    names: set[str] = set()
    people: list[Person] = []
    while len(people) < 80:
        if rng.random() < 0.08:
            name, local = rng.choice(OTHER_SCRIPT_NAMES)
        else:
            (first, first_ascii), (last, last_ascii) = rng.choice(FIRST_NAMES), rng.choice(
                LAST_NAMES
            )
            name, local = f"{first} {last}", f"{first_ascii}.{last_ascii}"
        if name in names:
            continue
        names.add(name)
        people.append(
            Person(
                name=name,
                local=local,
                domain=rng.choice(DOMAINS),
                client=rng.choices(CLIENTS, weights=CLIENT_WEIGHTS)[0],
                title=rng.choice(TITLES),
                department=rng.choice(DEPARTMENTS),
                office=rng.choice(OFFICES),
                phone=f"+{rng.choice((44, 49, 33, 1, 48))} {rng.randint(100, 999)} "
                f"{rng.randint(100000, 9999999)}",
                tz=rng.choice(TIMEZONES),
            )
        )
    return people


def _message_id(rng: random.Random, author: Person) -> str:
    if author.client == "outlook":
        pod = rng.choice(("DB9PR04", "AM0PR10", "PAXPR08", "VI1PR06"))
        server = f"{pod}MB{rng.randint(1000, 9999)}"
        return f"<{server}{rng.getrandbits(160):040X}@{server}.eurprd04.prod.outlook.com>"
    if author.client == "gmail":
        token = base64.b64encode(rng.randbytes(36), altchars=b"+_").decode().rstrip("=")
        return f"<CA{token}@mail.gmail.com>"
    uid = uuid.UUID(int=rng.getrandbits(128), version=4)
    if author.client == "apple":
        return f"<{str(uid).upper()}@{author.domain}>"
    return f"<{uid}@{author.domain}>"


def _received_chain(
    rng: random.Random, author: Person, queue_id: str, arrived: str, sent: str
) -> list[str]:
    """Received lines, the last hop (our MX) first, as they appear in a stored mail."""
    if author.client == "outlook":
        ip = f"40.107.{rng.randint(1, 254)}.{rng.randint(1, 254)}"
        host = f"EUR0{rng.randint(1, 5)}-DB8-obe.outbound.protection.outlook.com"
        inner = f"DB9PR04MB{rng.randint(1000, 9999)}.eurprd04.prod.outlook.com"
        return [
            f"from {host} ({host} [{ip}]) by {MX} (Postfix) with ESMTPS id {queue_id} "
            f"for <support@example.com>; {arrived}",
            f"from {inner} ([fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}]) by {inner} "
            f"([fe80::{rng.getrandbits(16):x}%5]) with mapi id "
            f"15.20.7633.{rng.randint(10, 99):03d}; {sent}",
        ]
    if author.client == "gmail":
        ip = f"209.85.{rng.randint(128, 255)}.{rng.randint(1, 254)}"
        host = f"mail-ej1-f{rng.randint(10, 99)}.google.com"
        return [
            f"from {host} ({host} [{ip}]) by {MX} (Postfix) with ESMTPS id {queue_id} "
            f"for <support@example.com>; {arrived}",
            f"by 2002:a17:906:{rng.getrandbits(16):x}:b0:{rng.getrandbits(12):x}:"
            f"{rng.getrandbits(16):x} with SMTP id {rng.getrandbits(64):x}; {sent}",
        ]
    relay = f"smtp-out{rng.randint(1, 3)}.{author.domain}"
    ip = f"192.0.2.{rng.randint(1, 254)}"
    client_ip = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    return [
        f"from {relay} ({relay} [{ip}]) by {MX} (Postfix) with ESMTPS id {queue_id} "
        f"for <support@example.com>; {arrived}",
        f"from smtpclient.apple ([{client_ip}]) by {relay} (Postfix) with ESMTPSA id "
        f"{rng.getrandbits(40):X}; {sent}",
    ]


def _client_headers(msg: EmailMessage, rng: random.Random, author: Person, subject: str) -> None:
    if author.client == "outlook":
        msg["Thread-Topic"] = subject
        msg["Thread-Index"] = base64.b64encode(rng.randbytes(22)).decode()
        msg["Accept-Language"] = "en-GB, en-US"
        msg["Content-Language"] = "en-GB"
        msg["X-MS-Has-Attach"] = ""
        msg["X-Mailer"] = "Microsoft Outlook 16.0"
    elif author.client == "apple":
        msg["X-Mailer"] = "Apple Mail (2.3774.600.62)"
    elif author.client == "thunderbird":
        msg["User-Agent"] = (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 "
            "Thunderbird/115.11.0"
        )
    # Gmail's web client names itself in no header; its Message-ID gives it away.


def _set_boundaries(msg: EmailMessage, rng: random.Random, client: str) -> None:
    """Boundaries in the client's style; the standard library's come from the global random."""
    for part in msg.walk():
        if not part.is_multipart():
            continue
        if client == "outlook":
            boundary = f"_000_{rng.getrandbits(160):040X}_"
        elif client == "gmail":
            boundary = f"000000000000{rng.getrandbits(64):016x}"
        elif client == "apple":
            boundary = f"Apple-Mail={uuid.UUID(int=rng.getrandbits(128), version=4)}"
        else:
            boundary = f"------------{rng.getrandbits(96):024X}"[:36]
        part.set_boundary(boundary)


def _signature(author: Person, *, full: bool) -> str:
    if not full:
        return author.name.split()[0]
    return (
        f"{author.name}\n{author.title} | {author.department}\nExample {author.office}\n"
        f"Phone: {author.phone}\n{author.email}"
    )


def _disclaimer(author: Person) -> str:
    if author.domain == "example.org":
        return "\n\n" + DISCLAIMER
    if author.domain == "eu.example.org":
        return "\n\n" + DISCLAIMER_DE + "\n\n" + DISCLAIMER
    return ""


def _quote_header(client: str, parent: Sent) -> str:
    who = f"{parent.author.name} <{parent.author.email}>"
    if client == "gmail":
        when = parent.date.strftime("%a, %-d %b %Y at %H:%M")
    elif client == "apple":
        when = parent.date.strftime("%-d %b %Y, at %H:%M")
    else:
        when = parent.date.strftime("%d/%m/%Y %H:%M")
    return f"On {when}, {who} wrote:"


def _quote_text(client: str, parent: Sent) -> str:
    quoted = parent.text[:MAX_QUOTED_CHARS]
    if client == "outlook":
        return (
            "________________________________\n"
            f"From: {parent.author.name} <{parent.author.email}>\n"
            f"Sent: {parent.date.strftime('%A, %B %-d, %Y %-I:%M %p')}\n"
            f"To: {SUPPORT}\nSubject: {parent.subject}\n\n{quoted}"
        )
    lines = "\n".join(f"> {line}" if line else ">" for line in quoted.splitlines())
    return f"{_quote_header(client, parent)}\n\n{lines}"


def _quote_html(client: str, parent: Sent) -> str:
    if len(parent.html_body) > 2 * MAX_QUOTED_CHARS:
        inner = "".join(
            f"<p>{html.escape(p)}</p>" for p in parent.text[:MAX_QUOTED_CHARS].split("\n\n")
        )
    else:
        inner = parent.html_body
    if client == "outlook":
        sent = parent.date.strftime("%A, %B %-d, %Y %-I:%M %p")
        return (
            '<div style="border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm">'
            f'<p class="MsoNormal"><b>From:</b> {html.escape(parent.author.name)} &lt;'
            f"{parent.author.email}&gt;<br><b>Sent:</b> {sent}<br><b>To:</b> IT Support &lt;"
            f"support@example.com&gt;<br><b>Subject:</b> {html.escape(parent.subject)}</p>"
            f"</div>{inner}"
        )
    header = html.escape(_quote_header(client, parent))
    if client == "gmail":
        return (
            f'<br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">{header}<br></div>'
            '<blockquote class="gmail_quote" style="margin:0px 0px 0px 0.8ex;border-left:1px '
            f'solid rgb(204,204,204);padding-left:1ex">{inner}</blockquote></div>'
        )
    return f'<div><br><blockquote type="cite"><div>{header}</div>{inner}</blockquote></div>'


def _html_paragraphs(client: str, paragraphs: Sequence[str]) -> str:
    def lines(p: str) -> str:
        return "<br>\n".join(html.escape(line) for line in p.splitlines())

    if client == "outlook":
        return "".join(
            f'<p class="MsoNormal"><span lang="EN-US">{lines(p)}<o:p></o:p></span></p>\n'
            '<p class="MsoNormal"><span lang="EN-US"><o:p>&nbsp;</o:p></span></p>\n'
            for p in paragraphs
        )
    if client == "gmail":
        return '<div dir="ltr">' + "<div><br></div>".join(
            f"<div>{lines(p)}</div>" for p in paragraphs
        ) + "</div>"
    if client == "apple":
        return "".join(f"<div>{lines(p)}</div><div><br></div>" for p in paragraphs)
    return "".join(f"<p>{lines(p)}</p>\n" for p in paragraphs)


def _html_document(client: str, body: str) -> str:
    if client == "outlook":
        return OUTLOOK_HEAD + body + "</div>\n</body>\n</html>\n"
    if client == "gmail":
        return body + "\n"
    if client == "apple":
        return (
            '<html><head><meta http-equiv="content-type" content="text/html; charset=utf-8">'
            '</head><body style="overflow-wrap: break-word; -webkit-nbsp-mode: space; '
            f'line-break: after-white-space;">{body}</body></html>\n'
        )
    return (
        "<!DOCTYPE html>\n<html>\n  <head>\n    <meta http-equiv=\"Content-Type\" "
        f"content=\"text/html; charset=UTF-8\">\n  </head>\n  <body>\n{body}  </body>\n</html>\n"
    )


def _log_excerpt(rng: random.Random, start: datetime, lines: int) -> str:
    levels = ("INFO", "INFO", "INFO", "WARN", "ERROR")
    events = (
        "Connecting to gateway vpn-eu.example.com:443",
        "TLS handshake completed (TLSv1.3, TLS_AES_256_GCM_SHA384)",
        "Tunnel interface up, assigned 10.20.{a}.{b}/32",
        "Keepalive timeout after 30000 ms, reconnecting",
        "Spooler: job {a} for user failed with 0x0000007e",
        "Kerberos: KDC_ERR_PREAUTH_FAILED for principal user@EXAMPLE.COM",
        "HTTP 403 Forbidden from https://intranet.example.com/sites/finance",
        "Disk queue length {a}, sustained for 120 s",
    )
    out = []
    moment = start - timedelta(minutes=lines)
    for _ in range(lines):
        moment += timedelta(seconds=rng.randint(1, 90))
        event = rng.choice(events).format(a=rng.randint(1, 250), b=rng.randint(1, 250))
        out.append(f"{moment:%Y-%m-%d %H:%M:%S} {rng.choice(levels):5} {event}")
    return "\n".join(out)


def _attach(msg: EmailMessage, rng: random.Random, author: Person, now: datetime) -> None:
    kind = rng.choices(("pdf", "png", "log"), weights=(4, 3, 3))[0]
    if kind == "log":
        text = _log_excerpt(rng, now, rng.randint(40, 300)) + "\n"
        name = rng.choice(("GlobalProtect.log", "error_log.txt", "printer-queue.txt"))
        msg.add_attachment(text, subtype="plain", filename=name)
        return
    size = rng.randint(20_000, 200_000)
    if kind == "pdf":
        blob = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + rng.randbytes(size) + b"\n%%EOF\n"
        name = rng.choice(("approval.pdf", "Quote_Adobe_licences.pdf",
                           f"Zugangsantrag_{author.local}.pdf", "Bestätigung Vorgesetzte.pdf"))
        msg.add_attachment(blob, maintype="application", subtype="pdf", filename=name)
        return
    blob = b"\x89PNG\r\n\x1a\n" + rng.randbytes(size)
    name = {
        "outlook": "image001.png",
        "apple": f"Screenshot {now:%Y-%m-%d} at {now:%H.%M.%S}.png",
    }.get(author.client, "screenshot.png")
    msg.add_attachment(blob, maintype="image", subtype="png", filename=name)


def _summary(mails: Sequence[bytes]) -> str:
    total = sum(len(m) for m in mails)
    sizes = sorted(len(m) for m in mails)
    replies = sum(1 for m in mails if b"\nIn-Reply-To:" in m)
    attached = sum(1 for m in mails if b"Content-Disposition: attachment" in m)
    return (
        f"{len(mails)} mails, {total / 1e6:.1f} MB; median {sizes[len(sizes) // 2]} B, "
        f"p90 {sizes[len(sizes) * 9 // 10]} B; {replies} replies, {attached} with attachments"
    )


if __name__ == "__main__":
    print(_summary(generate(int(sys.argv[1]) if len(sys.argv) > 1 else 200)))
