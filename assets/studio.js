// DPO Studio: keyboard and screen-reader fixes on top of Gradio's widgets (loaded into the page's <head>).
(() => {
  // Dropdowns open on Enter, Space or the arrow keys, not when Tab lands on them: an open list that Tab left
  // behind covered the controls under it. A click still opens a list at once.
  let pointer = false;
  let opening = false;
  const isDropdown = (el) => el instanceof HTMLInputElement && ["combobox", "listbox"].includes(el.getAttribute("role"));
  addEventListener("pointerdown", (e) => {
    pointer = true;
    const el = e.target;  // a click on a list that has the focus already (Tab left it closed) opens it too
    if (isDropdown(el) && el === document.activeElement && el.getAttribute("aria-expanded") !== "true") {
      opening = true;
      el.dispatchEvent(new FocusEvent("focus"));
      opening = false;
    }
  }, true);
  addEventListener("keydown", () => { pointer = false; }, true);
  const TABBABLE = "a[href], button, input, textarea, select, summary, [tabindex]";
  addEventListener("focus", (e) => {
    if (isDropdown(e.target) && !pointer && !opening) e.stopImmediatePropagation();
  }, true);
  addEventListener("keydown", (e) => {
    const el = e.target;
    if (!isDropdown(el)) return;
    if (el.getAttribute("aria-expanded") === "true") {
      // Tab out of an open list: close it first (Gradio's Escape), so it neither stays open over the controls
      // below nor takes the focus with it when it goes (focus fell to the page body).
      if (e.key === "Tab") {
        e.preventDefault();
        e.stopImmediatePropagation();
        el.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
        const all = [...document.querySelectorAll(TABBABLE)].filter((x) => x.tabIndex >= 0 && !x.disabled &&
          x.getClientRects().length && !x.closest("[inert], .option-list"));
        const next = all[all.indexOf(el) + (e.shiftKey ? -1 : 1)];
        if (next) { pointer = false; next.focus(); }
      }
      return;
    }
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      e.stopImmediatePropagation();
      opening = true;
      el.dispatchEvent(new FocusEvent("focus"));  // Gradio's own handler opens the list
      opening = false;
    }
  }, true);

  // Names Gradio leaves generic or wrong, fixed as widgets appear.
  const fix = () => {
    document.querySelectorAll(".token-remove:not(.remove-all)").forEach((b) => {
      const chip = b.closest(".token");
      const text = chip && chip.querySelector("span") ? chip.querySelector("span").innerText.trim() : "";
      if (text && b.getAttribute("aria-label") !== `Remove ${text}`) {
        b.setAttribute("aria-label", `Remove ${text}`);
        b.setAttribute("title", `Remove ${text}`);
      }
    });
    document.querySelectorAll(".token-remove.remove-all:not([aria-label])").forEach((b) => b.setAttribute("aria-label", "Remove all"));
    // An empty plot's placeholder carries an aria-label on a bare div: give it the image role that label needs.
    document.querySelectorAll("div.empty[aria-label]:not([role])").forEach((d) => d.setAttribute("role", "img"));
    // A scrolling code view must be reachable by keyboard.
    document.querySelectorAll(".cm-scroller").forEach((s) => { if (s.getAttribute("tabindex") !== "0") s.setAttribute("tabindex", "0"); });
    // The upload area's name must contain the words it shows ("Drop File Here - or - Click to Upload").
    document.querySelectorAll("button.boundedheight, .boundedheight[role=button]").forEach((b) => {
      const text = b.innerText.replace(/\s+/g, " ").trim();
      if (text && b.getAttribute("aria-label") !== text) b.setAttribute("aria-label", text);
    });
  };
  // The glossary (studio/ui/glossary.py): hover help on the smallest element that names a term.
  const escapeRe = (s) => s.replace(/[.*+?^$()|[\]\\{}]/g, "\\$&");
  const terms = Object.entries(window.DS_GLOSSARY || {}).map(([term, meaning]) =>
    [new RegExp("(^|[^\\w])" + escapeRe(term) + "s?([^\\w]|$)", "i"), term + ": " + meaning + "."]);
  const HOLDERS = '[data-testid="block-info"], [data-testid="block-label"], .info-text, label > span, .token > span, ' +
    'th, .prose p, .prose li, .prose td, .prose strong, button[role="tab"], .ds-status span';
  const explain = () => {
    if (!terms.length) return;
    document.querySelectorAll(HOLDERS).forEach((el) => {
      if (el.dataset.dsTerms === el.textContent) return;  // already explained for this text
      const found = terms.filter(([re]) => re.test(el.textContent)).map(([, text]) => text);
      if (found.length) el.setAttribute("title", found.join("\n"));
      else if (el.dataset.dsTerms !== undefined) el.removeAttribute("title");
      el.dataset.dsTerms = el.textContent;
    });
  };
  let queued = false;
  const later = () => { if (!queued) { queued = true; requestAnimationFrame(() => { queued = false; fix(); explain(); }); } };
  const start = () => { fix(); explain(); new MutationObserver(later).observe(document.body, { subtree: true, childList: true, characterData: true }); };
  if (document.body) start(); else addEventListener("DOMContentLoaded", start);
})();
