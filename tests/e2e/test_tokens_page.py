"""The API tokens page in Chromium: a member creates a token (shown once) that then works on the API, pages
through a long list with "show more" and revokes one; an admin lists a member's tokens and revokes the
leaked one; bad input gets a message in the page."""

from __future__ import annotations

import urllib.error
import urllib.request

from sqlalchemy import select

from common.models import ApiToken, User
from common.platform.accounts import issue_token
from tests.e2e.lab import artifacts_dir


def api_status(url: str, token: str) -> int:
    request = urllib.request.Request(f"{url}/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_create_list_more_and_revoke_tokens_and_an_admin_revokes_a_members(lab, signed_in):
    with lab.sessions.begin() as s:  # 55 older tokens of bob's: more than the page's first 50
        bob = s.get(User, lab.users["bob"])
        for i in range(55):
            issue_token(s, bob, f"old-{i:02d}", None)
    bob_page = signed_in("bob").goto("/tokens")
    rows = "document.querySelectorAll('#tokens tr[data-token-id]').length"
    bob_page.wait_for_function(f"() => {rows} === 50")

    bob_page.fill("#token-days", "0")
    bob_page.click("#new-token button[type=submit]")
    bob_page.wait_for_selector("#token-message.is-error")
    assert "whole number of days" in bob_page.text_content("#token-message")

    bob_page.fill("#token-name", "leaky-notebook")
    bob_page.fill("#token-days", "30")
    bob_page.click("#new-token button[type=submit]")
    bob_page.wait_for_selector("#token-created:not([hidden])")
    raw = bob_page.text_content("#token-raw").strip()
    assert api_status(lab.url, raw) == 200  # the token shown once works on the API
    bob_page.wait_for_function("() => document.querySelector('#tokens td')?.textContent === 'leaky-notebook'")
    assert "expires" in bob_page.text_content("#tokens tr[data-token-id] >> nth=0")
    bob_page.click("#tokens button[data-more]")
    bob_page.wait_for_function(f"() => {rows} === 56")
    assert bob_page.locator("#tokens button[data-more]").count() == 0
    bob_page.screenshot(path=str(artifacts_dir() / "tokens-page.png"), full_page=True)

    admin = signed_in("admin").goto("/tokens")
    admin.fill("#token-member-name", "nobody-here")
    admin.click("#token-member button[type=submit]")
    admin.wait_for_selector("#tokens-error:not([hidden])")
    assert "nobody-here" in admin.text_content("#tokens-error")
    admin.fill("#token-member-name", "bob")
    admin.click("#token-member button[type=submit]")
    admin.wait_for_function("() => document.querySelector('#tokens td')?.textContent === 'leaky-notebook'")
    admin.click("#tokens tr[data-token-id] >> nth=0 >> button")
    admin.wait_for_selector("#token-message.is-ok")
    admin.wait_for_function("() => document.querySelectorAll('#tokens td.status-cancelled').length === 1")
    assert api_status(lab.url, raw) == 401  # revoked by the admin: refused at once
    with lab.sessions() as s:
        revoked = s.scalars(
            select(ApiToken.name).where(
                ApiToken.user_id == lab.users["bob"], ApiToken.revoked_at.is_not(None)
            )
        ).all()
    assert revoked == ["leaky-notebook"]
