"""The console in a real browser (headless Chromium through WebDriver), against a running
`uidflow run` with the simulators: called by deploy/console-test, which starts them, seeds the
demo's applications and passes everything in the environment.

Scenarios (each one counts as one test in the closing line):
  sign-in: a bad token is refused; the session cookie is HttpOnly and SameSite=Strict; the
           keyboard alone signs in (the token field has focus, Enter submits); sign-out works
  clerk-scope: a clerk lists and opens their own service's applications, and another service's
           application answers "not found"; operator pages answer "not allowed"
  replay-single: the MVD is down, an issue fails and is parked; the operator replays it from
           its page, the clerk types the code on the application's page, and it completes
  bulk-replay: the SMS gateway is down while passwords go out, N applications are parked; the
           operator previews "replay all" for the filter, replays with one reason, and every
           application completes with exactly one password SMS; the audit lists each action
  masking: no page's HTML holds an identification number or phone unmasked
  accessibility: axe-core finds no serious or critical violation on any page
  phone-width: every page fits a 390 px wide viewport (no sideways scrolling of the page)

Screenshots of each page go to $SCREENSHOTS (docs/console when the docs are refreshed).
"""

import json
import os
import re
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import uuid

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

BASE = os.environ["CONSOLE_BASE"]
SIM = os.environ["SIM_BASE"]
SIM_TOKEN = open(os.environ["SIM_TOKEN_FILE"]).read().strip()
TOKENS = json.loads(os.environ["CONSOLE_TOKENS"])
BIN = os.environ["UIDFLOW_BIN"]
WORK = os.environ["WORK"]
SHOTS = os.environ.get("SCREENSHOTS", "target/console-shots")
AXE = open(os.environ["AXE_JS"]).read()
DEADLINE = 60

# Every identification number and phone that reached the system, to look for in pages.
SECRETS = set()
ID_SHAPE = re.compile(r"\b[1-6][0-9]{6}[A-Z][0-9]{3}[A-Z]{2}[0-9]\b")
PHONE_SHAPE = re.compile(r"\+375[0-9]{9}\b")

pages_seen = {}  # url -> html (for the masking check)
axe_failures = []
axe_runs = [0]
width_failures = []


def log(message):
    print(f"  {message}", file=sys.stderr, flush=True)


def wait_for(what, probe, timeout=DEADLINE):
    end = time.time() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


# --- the system, outside the browser -------------------------------------------------------

def http(method, url, token=None, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, None


def status_of(application_id):
    code, body = http("GET", f"{BASE}/v1/applications/{application_id}", TOKENS["operator"])
    return body["status"] if code == 200 else None


def history_of(application_id):
    return http("GET", f"{BASE}/v1/applications/{application_id}", TOKENS["operator"])[1]["history"]


def faults(service, outage):
    code, _ = http("PUT", f"{SIM}/sim/v1/faults/{service}", SIM_TOKEN, {"outage": outage})
    assert code == 200, f"the simulator took no faults ({code})"


def messages_to(phone):
    _, body = http("GET", f"{SIM}/sms/v1/messages?phone={phone.replace('+', '%2B')}", SIM_TOKEN)
    return body["messages"]


def code_for(phone):
    for message in reversed(messages_to(phone)):
        found = re.search(r"give the clerk the code ([0-9]{6})", message["text"])
        if found:
            return found.group(1)
    return None


def check_digit(first13):
    weights = [7, 3, 1]
    return sum(int(c, 36) * weights[i % 3] for i, c in enumerate(first13)) % 10


def person(n):
    """A made-up valid applicant, distinct for each n (born 1970 + n days)."""
    day = 1 + n % 28
    month = 1 + (n // 28) % 12
    first13 = f"3{day:02d}{month:02d}70A{n % 1000:03d}PB"
    number = f"{first13}{check_digit(first13)}"
    phone = f"+37544{7_000_000 + n:07d}"
    SECRETS.update([number, phone])
    return {"identification_number": number, "date_of_birth": f"1970-{month:02d}-{day:02d}", "phone": phone}


def issue(p, service="minsk-sov-oa"):
    return {
        "application_id": str(uuid.uuid4()),
        "kind": "issue",
        "submitted_at": "2026-12-02T10:15:00+03:00",
        "issuing_service": {"code": service},
        "applicant": {"surname": "Іваноў", "given_name": "Іван", "patronymic": None,
                      "date_of_birth": p["date_of_birth"], "identification_number": p["identification_number"]},
        "document": {"type": "passport", "number": "MP1234567"},
        "consent_to_verification": True,
        "phone": p["phone"],
        "phone_use_attested": True,
    }


def submit(applications):
    paths = []
    for application in applications:
        path = os.path.join(WORK, application["application_id"] + ".json")
        with open(path, "w") as f:
            json.dump(application, f, ensure_ascii=False)
        paths.append(path)
    subprocess.run([BIN, "submit", *paths], check=True, stdout=subprocess.DEVNULL)


def seen_secrets_from_examples():
    for root, _, files in os.walk("schemas/examples"):
        for name in files:
            if name.startswith("valid-") or root.endswith("demo"):
                try:
                    data = json.load(open(os.path.join(root, name)))
                except (ValueError, UnicodeDecodeError):
                    continue
                number = (data.get("applicant") or {}).get("identification_number")
                if isinstance(number, str) and len(number) >= 12:
                    SECRETS.add(number.strip().upper())
                for key in ("phone", "new_phone"):
                    if isinstance(data.get(key), str):
                        SECRETS.add(re.sub(r"[^0-9+]", "", data[key]))


# --- the browser ---------------------------------------------------------------------------

def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1280,900", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(argument)
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    return driver


def visit(driver, path, shot=None):
    driver.get(BASE + path)
    return record(driver, shot)


def record(driver, shot=None):
    """Keeps the page's HTML for the masking check, runs axe, and takes a screenshot."""
    html = driver.page_source
    pages_seen[driver.current_url] = html
    violations = driver.execute_async_script(
        AXE + "\n;var done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(function (r) {"
        "  done(r.violations.filter(function (v) { return v.impact === 'serious' || v.impact === 'critical'; })"
        "    .map(function (v) { return v.id + ' (' + v.impact + '): ' + v.nodes.map(function (n) { return n.target.join(' '); }).slice(0, 3).join(', '); }));"
        "}).catch(function (e) { done(['axe failed: ' + e]); });")
    axe_runs[0] += 1
    for violation in violations:
        axe_failures.append(f"{driver.current_url}: {violation}")
    if shot:
        os.makedirs(SHOTS, exist_ok=True)
        driver.save_screenshot(os.path.join(SHOTS, shot + ".png"))
    return html


def phone_width(driver, path, shot=None):
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True})
    try:
        driver.get(BASE + path)
        wide = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]")
        if wide[0] > wide[1] + 1:
            width_failures.append(f"{path}: {wide[0]} px wide in a {wide[1]} px viewport")
        if shot:
            driver.save_screenshot(os.path.join(SHOTS, shot + ".png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def sign_in(driver, token_name):
    driver.delete_all_cookies()
    driver.get(BASE + "/ui/sign-in")
    field = driver.switch_to.active_element
    assert field.get_attribute("id") == "token", "the token field has the focus"
    field.send_keys(TOKENS[token_name] + Keys.ENTER)
    wait_for("the first page after sign-in", lambda: "/ui/sign-in" not in driver.current_url)


def text(driver):
    return driver.find_element(By.TAG_NAME, "main").text


# --- scenarios -----------------------------------------------------------------------------

def scenario_sign_in(driver):
    record_url = visit(driver, "/ui/sign-in", "sign-in")
    assert "Token" in record_url
    # The skip link is the first stop of the keyboard.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    driver.get(BASE + "/ui/sign-in")
    driver.switch_to.active_element.send_keys("not-a-token" + Keys.ENTER)
    wait_for("the refusal", lambda: "not valid" in driver.page_source)
    assert driver.get_cookie("uidflow_console") is None
    sign_in(driver, "clerk-minsk-sov-oa")
    cookie = driver.get_cookie("uidflow_console")
    assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie
    assert "uidflow_console" not in driver.execute_script("return document.cookie")
    assert driver.current_url.endswith("/ui/applications")
    # Keyboard: Tab from the top reaches the skip link first, then the navigation.
    driver.get(BASE + "/ui/applications")
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("class") == "skip"
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/sign-out'] button").click()
    wait_for("the sign-in page", lambda: driver.current_url.endswith("/ui/sign-in"))
    driver.get(BASE + "/ui/applications")
    assert driver.current_url.endswith("/ui/sign-in"), "signed out means signed out"


def scenario_clerk_scope(driver):
    sign_in(driver, "clerk-minsk-sov-oa")
    html = visit(driver, "/ui/applications", "applications-clerk")
    services = {td.text for td in driver.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(4)")}
    assert services == {"minsk-sov-oa"}, f"a clerk lists only their service: {services}"
    own = "7a9e664c-92b2-4787-bfbb-520108e9d1fc"      # valid-issue-belarusian (minsk-sov-oa)
    other = "c27e74a6-cab6-465a-ac45-eb678f05954f"    # valid-issue-russian-names (grodno-okt-oa)
    assert own in html
    visit(driver, f"/ui/applications/{own}", "application-timeline")
    assert "Timeline" in text(driver) and "completed" in text(driver)
    # Find by id: another service's application is "not found", exactly as an unknown one.
    driver.get(BASE + "/ui/applications")
    driver.find_element(By.ID, "find-id").send_keys(other + Keys.ENTER)
    wait_for("the answer", lambda: "Not found" in driver.page_source)
    assert other not in text(driver).replace(f"No application {other}.", "")
    assert "Іван" not in driver.page_source
    record(driver)
    for path in ("/ui/overview", "/ui/dead-letters", "/ui/audit"):
        driver.get(BASE + path)
        assert "Not allowed" in driver.page_source, path
    # The status filter.
    visit(driver, "/ui/applications?status=rejected")
    statuses = {td.text for td in driver.find_elements(By.CSS_SELECTOR, "tbody tr td:nth-child(3)")}
    assert statuses == {"rejected"}, statuses


def scenario_replay_single(driver):
    p = person(1)
    application = issue(p)
    application_id = application["application_id"]
    faults("mvd", True)
    try:
        submit([application])
        wait_for("the application to fail", lambda: status_of(application_id) == "failed")
    finally:
        faults("mvd", False)
    sign_in(driver, "operator")
    visit(driver, "/ui/dead-letters?step=verify-identity", "dead-letters")
    link = wait_for("its dead letter", lambda: [
        a for a in driver.find_elements(By.CSS_SELECTOR, "tbody tr")
        if application_id[:8] in a.text])[0].find_element(By.CSS_SELECTOR, "td a")
    link.click()
    record(driver, "dead-letter")
    driver.find_element(By.ID, "replay-reason").send_keys("MVD is back (console test)")
    driver.find_element(By.CSS_SELECTOR, "form[action$='/replay'] button").click()
    wait_for("the replayed state", lambda: "replayed by operator" in text(driver))
    wait_for("the code SMS", lambda: status_of(application_id) == "awaiting_phone_confirmation")
    code = wait_for("a code", lambda: code_for(p["phone"]))
    # The clerk types the code on the application's page.
    sign_in(driver, "clerk-minsk-sov-oa")
    visit(driver, f"/ui/applications/{application_id}", "application-confirm")
    driver.find_element(By.ID, "code").send_keys(code + Keys.ENTER)
    wait_for("the code to be sent", lambda: "sent=1" in driver.current_url)
    wait_for("completion", lambda: status_of(application_id) == "completed")
    sign_in(driver, "operator")
    visit(driver, f"/ui/applications/{application_id}")
    assert "completed" in text(driver) and "replayed by operator" in text(driver)


def scenario_bulk_replay(driver):
    people = [person(100 + i) for i in range(5)]
    applications = [issue(p, "grodno-okt-oa") for p in people]
    ids = [a["application_id"] for a in applications]
    submit(applications)
    wait_for("the code SMS", lambda: all(status_of(i) == "awaiting_phone_confirmation" for i in ids))
    faults("sms", True)
    try:
        for p, application_id in zip(people, ids):
            code = wait_for("a code", lambda: code_for(p["phone"]))
            answer, _ = http("POST", f"{BASE}/v1/applications/{application_id}/phone-confirmation",
                             TOKENS["clerk-grodno-okt-oa"], {"code": code})
            assert answer == 202, answer
        wait_for("every application to fail", lambda: all(status_of(i) == "failed" for i in ids))
    finally:
        faults("sms", False)
    sign_in(driver, "operator")
    visit(driver, "/ui/overview", "overview")
    first = driver.find_element(By.CSS_SELECTOR, "#live time").text
    wait_for("the overview to update itself",
             lambda: driver.find_element(By.CSS_SELECTOR, "#live time").text != first, timeout=15)
    driver.get(BASE + "/ui/dead-letters")
    driver.find_element(By.CSS_SELECTOR, "#f-step option[value='send-sms']").click()
    driver.find_element(By.ID, "f-service").send_keys("grodno-okt-oa" + Keys.ENTER)
    wait_for("the filtered list", lambda: "service=grodno-okt-oa" in driver.current_url)
    driver.find_element(By.LINK_TEXT, "Preview replay of all").click()
    record(driver, "bulk-preview")
    count = driver.find_element(By.ID, "bulk-count").text
    assert count.startswith("5 parked"), count
    listed = driver.page_source
    assert all(i[:8] in listed for i in ids), "the preview shows which"
    driver.find_element(By.ID, "bulk-reason").send_keys("SMS gateway is back (console test)")
    driver.find_element(By.CSS_SELECTOR, "form[action='/ui/dead-letters/bulk'] button").click()
    wait_for("the result", lambda: "5 dead letters replayed" in driver.page_source)
    record(driver, "bulk-done")
    wait_for("every application to complete", lambda: all(status_of(i) == "completed" for i in ids))
    for p, application_id in zip(people, ids):
        passwords = [m for m in messages_to(p["phone"]) if "temporary password" in m["text"]]
        completions = [h for h in history_of(application_id) if h["status"] == "completed"]
        assert len(completions) == 1, f"{application_id} completed {len(completions)} times"
        assert len(passwords) == 1, f"{application_id}: {len(passwords)} password SMS"
    visit(driver, "/ui/audit", "audit")
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert sum("SMS gateway is back (console test)" in r for r in rows) == 5, rows
    # A second bulk replay finds nothing left.
    driver.get(BASE + "/ui/dead-letters/bulk?action=replay&step=send-sms&service=grodno-okt-oa")
    assert driver.find_element(By.ID, "bulk-count").text.startswith("0 parked")


def scenario_pages_for_screenshots(driver):
    sign_in(driver, "operator")
    visit(driver, "/ui/applications", "applications-operator")
    visit(driver, "/ui/dead-letters?state=all", "dead-letters-all")
    links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "tbody tr td:first-child a")]
    assert len(links) >= 5, "the demo parked dead letters"
    for href in links:
        driver.get(href)
        record(driver)
    visit(driver, "/ui/dead-letters?kind=malformed")
    driver.find_element(By.CSS_SELECTOR, "tbody tr td:first-child a").click()
    record(driver, "dead-letter-malformed")
    visit(driver, "/ui/overview", "overview")


def scenario_masking(_driver):
    bad = []
    for url, html in pages_seen.items():
        for secret in SECRETS:
            if secret and secret in html:
                bad.append(f"{url}: {secret[:4]}…")
        for shape in (ID_SHAPE, PHONE_SHAPE):
            for found in shape.findall(html):
                bad.append(f"{url}: {found[:4]}… by shape")
    assert pages_seen, "pages were checked"
    assert not bad, "unmasked personal data: " + "; ".join(sorted(set(bad)))
    log(f"{len(pages_seen)} pages checked for {len(SECRETS)} numbers and phones")


def scenario_accessibility(driver):
    assert not axe_failures, "\n".join(axe_failures)
    # The check itself can fail: a field without a label is a critical violation.
    before = len(axe_failures)
    driver.get("data:text/html,<!doctype html><html lang=en><title>t</title><main><input></main></html>")
    record(driver)
    assert len(axe_failures) > before, "axe reports a field without a label"
    del axe_failures[before:]
    log(f"axe-core ran on {axe_runs[0] - 1} pages")


def scenario_phone_width(driver):
    sign_in(driver, "operator")
    for path, shot in (("/ui/overview", "phone-overview"), ("/ui/dead-letters?state=all", None),
                       ("/ui/applications", "phone-applications"), ("/ui/audit", None)):
        phone_width(driver, path, shot)
    sign_in(driver, "clerk-minsk-sov-oa")
    phone_width(driver, "/ui/applications/7a9e664c-92b2-4787-bfbb-520108e9d1fc", "phone-application")
    assert not width_failures, "; ".join(width_failures)


def main():
    seen_secrets_from_examples()
    driver = browser()
    passed = failed = 0
    try:
        for name, scenario in [("sign-in", scenario_sign_in), ("clerk-scope", scenario_clerk_scope),
                               ("replay-single", scenario_replay_single),
                               ("bulk-replay", scenario_bulk_replay),
                               ("screenshots", scenario_pages_for_screenshots),
                               ("phone-width", scenario_phone_width),
                               ("masking", scenario_masking),
                               ("accessibility", scenario_accessibility)]:
            started = time.time()
            try:
                scenario(driver)
                passed += 1
                print(f"console-test {name} ... ok ({time.time() - started:.1f} s)", flush=True)
            except (AssertionError, WebDriverException, KeyError, IndexError) as error:
                failed += 1
                print(f"console-test {name} ... FAILED: {error}", flush=True)
                traceback.print_exc()
                os.makedirs(SHOTS, exist_ok=True)
                try:
                    driver.save_screenshot(os.path.join(SHOTS, f"failed-{name}.png"))
                except WebDriverException:
                    pass
    finally:
        driver.quit()
    print(f"console-test: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
