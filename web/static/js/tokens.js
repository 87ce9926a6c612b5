// The API tokens page: create one (the raw token is shown once), list them newest first with "show more",
// revoke one; an admin can list a member's tokens to revoke a leaked one.
import { api, ApiError, firstItems } from "./api.js";
import { h, moreButton, say, showError, when } from "./ui.js";

const list = document.getElementById("tokens");
const error = document.getElementById("tokens-error");
const message = document.getElementById("token-message");
const limit = Number(list.dataset.limit) || 50;
let shown = limit;
let member = ""; // admins: whose tokens are listed ("" = one's own)

function state(token) {
  if (token.revoked_at) return `revoked ${when(token.revoked_at)}`;
  if (token.expires_at && new Date(token.expires_at) <= new Date()) return `expired ${when(token.expires_at)}`;
  return token.expires_at ? `active, expires ${when(token.expires_at)}` : "active, never expires";
}

function revokeButton(token) {
  if (token.revoked_at) return "";
  const button = h("button", {
    type: "button",
    class: "secondary",
    text: "Revoke",
    "aria-label": `Revoke token ${token.name} (${token.prefix}…)`,
  });
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(`/api/v1/tokens/${token.id}`, { method: "DELETE" });
      say(message, `Token ${token.name} (${token.prefix}…) is revoked.`, "ok");
      refresh();
    } catch (err) {
      say(message, err.message, "error");
      button.disabled = false;
    }
  });
  return button;
}

function table(tokens) {
  const head = h("tr", {}, ...["Name", "Starts with", "Created", "Last used", "State", ""].map((t) => h("th", { scope: "col", text: t })));
  const rows = tokens.map((t) =>
    h(
      "tr",
      { dataset: { tokenId: String(t.id) } },
      h("td", { text: t.name }),
      h("td", {}, h("code", { text: `${t.prefix}…` })),
      h("td", { text: when(t.created_at) }),
      h("td", { text: t.last_used_at ? when(t.last_used_at) : "never" }),
      h("td", { class: t.revoked_at ? "status-cancelled" : "", text: state(t) }),
      h("td", {}, revokeButton(t)),
    ),
  );
  return h("table", { class: "data tokens" }, head, ...rows);
}

async function refresh() {
  const path = member ? `/api/v1/tokens?user=${encodeURIComponent(member)}` : "/api/v1/tokens";
  try {
    const { items, more } = await firstItems(path, "tokens", shown, limit);
    showError(error, "");
    if (items.length === 0) {
      list.replaceChildren(h("p", { class: "muted", text: member ? `${member} has no tokens.` : "You have no tokens yet." }));
      return;
    }
    const older = moreButton(more, `Show ${limit} older tokens`, () => {
      shown += limit;
      refresh();
    });
    list.replaceChildren(table(items), older);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return; // the signed-out banner says it
    showError(error, `Could not list tokens: ${err.message}`);
    list.replaceChildren();
  }
}

document.getElementById("new-token").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = document.getElementById("token-name").value.trim();
  const days = document.getElementById("token-days").value.trim();
  const body = { name };
  if (days !== "") {
    const n = Number(days);
    if (!Number.isInteger(n) || n < 1) {
      say(message, "Expires after: give a whole number of days (1 or more), or leave it empty for never.", "error");
      return;
    }
    body.expires_in_days = n;
  }
  try {
    const token = await api("/api/v1/tokens", { method: "POST", body });
    document.getElementById("token-raw").textContent = token.token;
    document.getElementById("token-created").hidden = false;
    say(message, `Token ${token.name} created.`, "ok");
    member = "";
    refresh();
  } catch (err) {
    say(message, err.message, "error");
  }
});

document.getElementById("token-copy").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(document.getElementById("token-raw").textContent);
    say(message, "Copied.", "ok");
  } catch {
    say(message, "The browser did not allow copying; select the token and copy it by hand.", "error");
  }
});

const memberForm = document.getElementById("token-member");
if (memberForm) {
  memberForm.addEventListener("submit", (event) => {
    event.preventDefault();
    member = document.getElementById("token-member-name").value.trim();
    shown = limit;
    refresh();
  });
}

refresh();
