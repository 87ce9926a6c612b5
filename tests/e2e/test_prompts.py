"""A text-to-image dataset in the browser: where the pages show class names for an EDM dataset, they show the
prompts of a diffusers one (the dataset page's class filter, the explorer's legend). The shipped digits-sd
demo, registered with the lab's models (tests/e2e/lab.py), makes the dataset and map through the real jobs."""

from __future__ import annotations

from tests.e2e.test_explorer import POST_JSON, open_explorer
from tests.support.waiting import wait_for_job

PROMPT = "a handwritten digit"


def test_dataset_page_and_explorer_show_prompts_for_a_text_to_image_dataset(lab, signed_in):
    alice = signed_in("alice")
    page = alice.goto("/datasets")
    body = {"model": "digits-sd", "name": "sd-prompts", "num_samples": 10, "seed": 3, "steps": 3}
    status, job = page.evaluate(POST_JSON, ["/api/v1/datasets", body])
    assert status == 202, job
    ds_id = job["params"]["dataset_id"]
    assert wait_for_job(lab.sessions, job["id"], timeout=300).status == "succeeded"
    status, job = page.evaluate(
        POST_JSON, ["/api/v1/embeddings", {"dataset": "sd-prompts", "n_neighbors": 4}]
    )
    assert status == 202, job
    done = wait_for_job(lab.sessions, job["id"], timeout=300)
    assert done.status == "succeeded", done.error

    page = alice.goto(f"/datasets/{ds_id}")
    page.wait_for_function("() => document.querySelectorAll('#filter-class option').length > 1")
    options = page.locator("#filter-class option").all_text_contents()
    assert any(o.startswith(f"{PROMPT} zero") for o in options), options
    assert not any(o.startswith("0 ") for o in options), options  # the prompt, not its index

    page = open_explorer(alice, f"?embedding={done.result['embedding_id']}")
    legend = page.locator(".legend .legendtext").all_text_contents()
    assert legend and all(t.startswith(PROMPT) for t in legend[:10]), legend
    assert not alice.page_errors, alice.page_errors
