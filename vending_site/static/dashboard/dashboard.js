/* The operator dashboard: renders the state document, keeps it live from /ws/events/.
 *
 * Every string from the server is written with textContent (never innerHTML), and every
 * handler is attached with addEventListener, so the page keeps working under a strict CSP.
 */
"use strict";

(() => {
  const body = document.body;
  const config = {
    canAct: body.dataset.canAct === "true",
    canPorts: body.dataset.canPorts === "true",
    canResolve: body.dataset.canResolve === "true",
    wsPath: body.dataset.wsPath,
    stateUrl: body.dataset.stateUrl,
    machinesUrl: body.dataset.machinesUrl,
    vendUrl: body.dataset.vendUrl,
    selectUrl: body.dataset.selectUrl,
    approveUrl: body.dataset.approveUrl,
    portUrl: body.dataset.portUrl,
    transactionsUrl: body.dataset.transactionsUrl,
    logsUrl: body.dataset.logsUrl,
    resolveUrl: body.dataset.resolveUrl,
  };
  const FEED_BUFFER = 200; // rows kept in memory; a machine's own rows come from the server
  const POLL_MS = 5000; // presence, ports and discovery raise no event when they go quiet
  const HOUR_MS = 3600 * 1000;
  const MAX_BACKOFF_MS = 30000;
  const DISCOVERY_ENDPOINT = "udp discovery";
  const RANK = { queued: 0, sent: 1, unconfirmed: 2, succeeded: 3, failed: 3, expired: 3, cancelled: 3 };
  const STATE_LABEL = {
    queued: "Queued",
    sent: "Sent",
    unconfirmed: "Unconfirmed",
    succeeded: "Succeeded",
    failed: "Failed",
    expired: "Expired",
    cancelled: "Cancelled",
  };
  const SERVICE_LABEL = {
    discovery: "Discovery listener (UDP)",
    serial_bridge: "Serial bridge",
    sweeper: "Sweeper",
    notifier: "Notifier",
  };
  const SERVICE_STATE_LABEL = { running: "Running", stopped: "Stopped", never_started: "Never started" };
  const PORT_REQUESTS = [
    ["connect", "Connect"],
    ["disconnect", "Disconnect"],
    ["auto", "Auto"],
  ];

  const model = {
    lastEventId: 0,
    selected: null,
    machines: [],
    slots: [],
    ports: [],
    discovery: {},
    services: [],
    serviceStaleAfter: 15, // seconds without a heartbeat before a process counts as stopped
    transactions: [],
    txnIndex: new Map(),
    logs: [],
    logIds: new Set(),
    hours: [],
    charted: new Set(), // transactions already counted in the vends chart
    feedLimit: 50,
    clockOffset: 0, // server time minus this browser's time, in ms
  };
  const ui = {
    paused: false,
    pending: 0,
    feedDevice: "",
    machineNodes: new Map(),
    slotNodes: new Map(),
  };

  // --- Small helpers -------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  const find = (node, selector) => node.querySelector(selector);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function fromTemplate(id) {
    return $(id).content.firstElementChild.cloneNode(true);
  }

  function parseTime(iso) {
    const ms = iso ? Date.parse(iso) : NaN;
    return Number.isNaN(ms) ? null : ms;
  }

  const serverNow = () => Date.now() + model.clockOffset;

  const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  const dateFormat = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  const hourFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });

  function formatClock(ms) {
    if (ms === null) return "—";
    const sameDay = new Date(ms).toDateString() === new Date(serverNow()).toDateString();
    return sameDay ? clockFormat.format(ms) : dateFormat.format(ms);
  }

  function formatAgo(ms) {
    if (ms === null) return "never";
    const seconds = Math.max(0, Math.round((serverNow() - ms) / 1000));
    if (seconds < 5) return "just now";
    if (seconds < 90) return `${seconds} s ago`;
    if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
    if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
    return dateFormat.format(ms);
  }

  function setTime(node, iso, relative) {
    const ms = parseTime(iso);
    node.textContent = relative ? formatAgo(ms) : formatClock(ms);
    if (ms === null) {
      node.removeAttribute("datetime");
      node.removeAttribute("title");
    } else {
      node.dateTime = new Date(ms).toISOString();
      node.title = new Date(ms).toLocaleString();
      if (relative) node.dataset.relative = "true";
    }
  }

  function showNotice(id, message) {
    const node = $(id);
    node.textContent = message || "";
    node.hidden = !message;
  }

  function csrfToken() {
    const cookie = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("csrftoken="));
    return cookie ? decodeURIComponent(cookie.slice("csrftoken=".length)) : "";
  }

  async function request(url, { method = "GET", data } = {}) {
    const headers = { Accept: "application/json" };
    const options = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (data !== undefined) {
      headers["Content-Type"] = "application/json";
      headers["X-CSRFToken"] = csrfToken();
      options.body = JSON.stringify(data);
    }
    let response;
    try {
      response = await fetch(url, options);
    } catch {
      return { ok: false, status: 0, body: { detail: "The server could not be reached." } };
    }
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      payload = null;
    }
    if (!response.ok) {
      const detail = payload && typeof payload.detail === "string" ? payload.detail : `The server answered ${response.status}.`;
      return { ok: false, status: response.status, body: { ...(payload || {}), detail } };
    }
    return { ok: true, status: response.status, body: payload };
  }

  // --- Loading state -------------------------------------------------------------------

  /* While a document is being fetched, live events are held and applied after it, so
   * nothing newer than the document is lost; rows it already holds are dropped by id. */
  let loads = 0;
  let heldEvents = [];

  function beginLoad() {
    loads += 1;
  }

  function endLoad() {
    loads -= 1;
    if (loads > 0) return;
    const held = heldEvents;
    heldEvents = [];
    held.forEach(applyEvent);
  }

  function applyMachinesDoc(doc) {
    const serverTime = parseTime(doc.server_time);
    if (serverTime !== null) model.clockOffset = serverTime - Date.now();
    model.machines = doc.machines || [];
    model.ports = doc.ports || [];
    model.discovery = doc.discovery || {};
    model.services = doc.services || [];
    if (typeof doc.service_stale_after === "number") model.serviceStaleAfter = doc.service_stale_after;
  }

  function setTransactions(rows) {
    model.transactions = [];
    model.txnIndex = new Map();
    for (const txn of rows) {
      const entry = { ...txn, path: [txn.state] };
      model.transactions.push(entry);
      model.txnIndex.set(entry.id, entry);
    }
  }

  function setLogs(rows) {
    model.logs = rows.slice(0, FEED_BUFFER);
    model.logIds = new Set(model.logs.map((entry) => entry.id));
  }

  function applyState(doc) {
    applyMachinesDoc(doc);
    model.lastEventId = doc.last_event_id || 0;
    model.selected = doc.selected || null;
    model.slots = doc.slots || [];
    model.feedLimit = doc.feed_limit || 50;
    setTransactions(doc.transactions || []);
    model.charted = new Set();
    for (const txn of model.transactions) {
      if (txn.state === "succeeded" || txn.state === "failed") model.charted.add(txn.id);
    }
    setLogs(doc.logs || []);
    model.hours = (doc.vends_per_hour || []).map((h) => ({
      start: parseTime(h.hour),
      succeeded: h.succeeded,
      failed: h.failed,
    }));
    ui.slotNodes.clear();
    $("slots").replaceChildren();
    renderAll();
  }

  /* Fetch the whole state; events arriving meanwhile are held and applied after it, so
   * nothing newer than the document is lost and nothing older is applied twice. */
  async function reloadState(deviceId) {
    beginLoad();
    const query = deviceId ? `?device=${encodeURIComponent(deviceId)}` : "";
    const result = await request(config.stateUrl + query);
    if (result.ok) {
      applyState(result.body);
    } else if (result.status === 401 || result.status === 403) {
      setConnection("closed", "Logged out: reload the page to log in");
    } else {
      showNotice("slots-notice", result.body.detail);
    }
    endLoad();
    // The state's feeds are everyone's: a chosen machine's rows come from the server.
    if (result.ok && ui.feedDevice) loadFeeds();
    return result;
  }

  /* Both feeds from the server, of the machine chosen in the filter (or of all), so the
   * filter finds that machine's rows even when other machines filled the browser's buffer. */
  let feedRequest = 0;
  async function loadFeeds() {
    const device = ui.feedDevice;
    const ticket = (feedRequest += 1);
    renderFeeds(); // at once, from what we hold, until the server answers
    const query = new URLSearchParams({ limit: String(model.feedLimit) });
    if (device) query.set("device", device);
    beginLoad();
    const [txns, logs] = await Promise.all([
      request(`${config.transactionsUrl}?${query}`),
      request(`${config.logsUrl}?${query}`),
    ]);
    if (ticket === feedRequest) {
      if (txns.ok && logs.ok) {
        showNotice("feeds-notice", "");
        setTransactions(txns.body.transactions || []);
        setLogs(logs.body.logs || []);
      } else {
        showNotice("feeds-notice", (txns.ok ? logs : txns).body.detail);
      }
    }
    endLoad();
    if (ticket === feedRequest) renderFeeds();
  }

  let polling = false;
  async function pollMachines() {
    if (polling || loads > 0 || document.hidden) return;
    polling = true;
    const result = await request(config.machinesUrl);
    polling = false;
    if (!result.ok) return;
    applyMachinesDoc(result.body);
    renderMachines();
    renderPorts();
    renderServices();
    renderDiscovery();
    renderFeedFilter();
  }

  let pollSoonTimer = null;
  function pollSoon() {
    clearTimeout(pollSoonTimer);
    pollSoonTimer = setTimeout(pollMachines, 300);
  }

  // --- Live events ---------------------------------------------------------------------

  function handleMessage(message) {
    if (!message || typeof message !== "object") return;
    if (message.type === "reset") {
      reloadState(model.selected);
      return;
    }
    if (typeof message.id !== "number" || !message.kind) return;
    if (loads > 0) heldEvents.push(message);
    else applyEvent(message);
  }

  function applyEvent(event) {
    if (event.id <= model.lastEventId) return; // already part of the state we hold
    model.lastEventId = event.id;
    const payload = event.payload || {};
    switch (event.kind) {
      case "transaction":
        onTransaction(payload);
        break;
      case "stock":
        onStock(payload);
        break;
      case "device":
        onDevice(payload);
        break;
      case "log":
        onLog(payload);
        break;
      case "ports":
        pollSoon();
        break;
      case "service":
        onService(payload);
        break;
      default:
        break; // "command" and kinds added later: nothing on this page shows them
    }
  }

  function onTransaction(payload) {
    let txn = model.txnIndex.get(payload.id);
    if (!txn) {
      txn = { ...payload, created_at: payload.created_at || payload.updated_at, path: [payload.state] };
      model.transactions.unshift(txn);
      model.txnIndex.set(txn.id, txn);
      while (model.transactions.length > FEED_BUFFER) model.txnIndex.delete(model.transactions.pop().id);
      feedChanged();
    } else if ((RANK[payload.state] ?? 0) >= (RANK[txn.state] ?? 0) && payload.state !== txn.state) {
      txn.path.push(payload.state);
      txn.state = payload.state;
      txn.failure_reason = payload.failure_reason;
      txn.updated_at = payload.updated_at;
      feedChanged();
    }
    countInChart(txn);
    renderVendStatus(txn);
  }

  function onStock(payload) {
    if (payload.device_id !== model.selected) return;
    const slot = model.slots.find((s) => s.number === payload.slot);
    if (!slot) return;
    slot.quantity = payload.quantity;
    slot.capacity = payload.capacity;
    renderSlots();
    renderStockChart();
  }

  function onDevice(payload) {
    const machine = model.machines.find((m) => m.device_id === payload.device_id);
    if (!machine) {
      pollSoon(); // a new machine: fetch it whole (firmware, protocol)
      return;
    }
    Object.assign(machine, {
      name: payload.name,
      transport: payload.transport,
      online: payload.online,
      last_seen: payload.last_seen,
      is_active: payload.is_active,
      admission: payload.admission,
      asks_from: payload.asks_from,
    });
    if (payload.is_active) {
      for (const other of model.machines) if (other !== machine) other.is_active = false;
    }
    renderMachines();
  }

  function onLog(payload) {
    if (model.logIds.has(payload.id)) return; // already fetched with a feed
    model.logs.unshift(payload);
    model.logIds.add(payload.id);
    while (model.logs.length > FEED_BUFFER) model.logIds.delete(model.logs.pop().id);
    if (payload.endpoint === DISCOVERY_ENDPOINT) pollSoon();
    feedChanged();
  }

  function onService(payload) {
    const index = model.services.findIndex((s) => s.name === payload.name);
    if (index >= 0) model.services[index] = payload;
    else model.services.push(payload);
    renderServices();
  }

  // --- Rendering: machines -------------------------------------------------------------

  function renderAll() {
    renderMachines();
    renderSlots();
    renderPorts();
    renderServices();
    renderDiscovery();
    renderFeedFilter();
    renderFeeds();
    renderVendsChart();
    renderStockChart();
  }

  function machineLabel(machine) {
    return machine.name ? `${machine.name} (${machine.device_id})` : machine.device_id;
  }

  function renderMachines() {
    const list = $("machines");
    const seen = new Set();
    model.machines.forEach((machine, index) => {
      let node = ui.machineNodes.get(machine.device_id);
      if (!node) {
        node = fromTemplate("tpl-machine");
        const id = machine.device_id;
        find(node, ".machine__show").addEventListener("click", () => selectMachine(id));
        const activate = find(node, ".machine__activate");
        if (activate) activate.addEventListener("click", () => makeActive(id, activate));
        const approve = find(node, ".machine__approve");
        if (approve) approve.addEventListener("click", () => approveMachine(id, approve));
        ui.machineNodes.set(id, node);
      }
      fillMachine(node, machine);
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
      seen.add(machine.device_id);
    });
    for (const [id, node] of ui.machineNodes) {
      if (!seen.has(id)) {
        node.remove();
        ui.machineNodes.delete(id);
      }
    }
    $("machines-empty").hidden = model.machines.length > 0;
    const selected = model.machines.find((m) => m.device_id === model.selected);
    $("slots-machine").textContent = selected ? `· ${machineLabel(selected)}` : "";
    $("stock-machine").textContent = selected ? machineLabel(selected) : "";
    renderTarget();
  }

  /* One machine is shown, and the Vend buttons vend on it: the panel says which, and says
   * so plainly when it is offline (a vend would be refused), with the buttons disabled.
   * The default machine (for REST clients that name none) is a separate, labelled choice. */
  function renderTarget() {
    const machine = model.machines.find((m) => m.device_id === model.selected);
    const target = $("slots-target");
    const online = Boolean(machine && machine.online);
    target.dataset.online = String(online);
    target.hidden = !machine;
    if (machine && online) {
      target.textContent = config.canAct ? `Online: the Vend buttons vend on ${machineLabel(machine)}.` : "Online.";
    } else if (machine) {
      const seen = parseTime(machine.last_seen);
      const when = seen === null ? "never seen" : `last seen ${formatAgo(seen)}`;
      const others = model.machines.filter((m) => m.online).length;
      const hint = others ? ` ${others} other machine(s) online: open one to vend.` : "";
      target.textContent = `Offline (${when}): vends on ${machineLabel(machine)} are refused until it is heard from again.${hint}`;
    }
    for (const node of ui.slotNodes.values()) fillVendButton(node);
  }

  function fillVendButton(node) {
    const button = find(node, ".slot__vend");
    if (!button) return;
    const machine = model.machines.find((m) => m.device_id === model.selected);
    const name = machine ? machine.name || machine.device_id : "";
    button.textContent = name ? `Vend on ${name}` : "Vend";
    button.disabled = !(machine && machine.online) || button.dataset.busy === "true";
    const product = node.dataset.product ? ` (${node.dataset.product})` : "";
    const where = machine ? ` on ${machineLabel(machine)}` : "";
    button.setAttribute("aria-label", `Vend slot ${node.dataset.slot}${product}${where}`);
  }

  function fillMachine(node, machine) {
    node.dataset.online = String(Boolean(machine.online));
    node.setAttribute("aria-current", String(machine.device_id === model.selected));
    find(node, ".machine__name").textContent = machineLabel(machine);
    find(node, ".badge--active").hidden = !machine.is_active;
    find(node, ".machine__state").textContent = machine.online ? "Online" : "Offline";
    find(node, ".machine__transport").textContent = machine.transport_label || machine.transport || "—";
    setTime(find(node, ".machine__seen"), machine.last_seen, true);
    find(node, ".machine__firmware").textContent = machine.firmware || "unknown";
    const show = find(node, ".machine__show");
    show.hidden = machine.device_id === model.selected;
    show.setAttribute("aria-label", `Open ${machineLabel(machine)}: show its slots and vend on it`);
    find(node, ".machine__shown").hidden = machine.device_id !== model.selected;
    // "awaiting approval" or "moved to <address>, awaiting approval": staff must act.
    const waiting = Boolean(machine.admission && machine.admission.includes("awaiting approval"));
    const admission = find(node, ".badge--admission");
    admission.hidden = !waiting;
    admission.textContent = waiting ? machine.admission : "";
    const pending = machine.admission === "awaiting approval";
    const activate = find(node, ".machine__activate");
    if (activate) {
      activate.hidden = machine.is_active || pending;
      activate.setAttribute("aria-label", `Make ${machineLabel(machine)} the default machine (for REST clients that name none)`);
    }
    // Staff approve the address they see: the server refuses if it changed meanwhile.
    const approve = find(node, ".machine__approve");
    if (approve) {
      approve.hidden = !(waiting && machine.asks_from);
      approve.dataset.address = machine.asks_from || "";
      approve.textContent = pending ? `Approve ${machine.asks_from || ""}` : `Accept ${machine.asks_from || ""}`;
      approve.setAttribute("aria-label", `${pending ? "Approve" : "Accept the new address of"} ${machineLabel(machine)} at ${machine.asks_from}`);
    }
  }

  async function approveMachine(deviceId, button) {
    showNotice("machines-notice", "");
    button.disabled = true;
    const data = { device_id: deviceId, address: button.dataset.address };
    const result = await request(config.approveUrl, { method: "POST", data });
    button.disabled = false;
    if (!result.ok) {
      showNotice("machines-notice", result.body.detail);
      return;
    }
    const machine = model.machines.find((m) => m.device_id === deviceId);
    if (machine) Object.assign(machine, result.body);
    renderMachines();
  }

  async function selectMachine(deviceId) {
    showNotice("slots-notice", "");
    const result = await reloadState(deviceId);
    if (result.ok) {
      const url = new URL(window.location.href);
      url.searchParams.set("device", deviceId);
      window.history.replaceState(null, "", url);
      const heading = $("slots-title");
      heading.tabIndex = -1;
      heading.focus();
    }
  }

  async function makeActive(deviceId, button) {
    showNotice("machines-notice", "");
    button.disabled = true;
    const result = await request(config.selectUrl, { method: "POST", data: { device_id: deviceId } });
    button.disabled = false;
    if (!result.ok) {
      showNotice("machines-notice", result.body.detail);
      return;
    }
    for (const machine of model.machines) machine.is_active = machine.device_id === deviceId;
    renderMachines();
  }

  // --- Rendering: slots ----------------------------------------------------------------

  function slotLevel(slot) {
    if (slot.quantity <= 0) return "empty";
    if (slot.quantity <= slot.low_stock_threshold) return "low";
    return "ok";
  }

  function renderSlots() {
    const list = $("slots");
    model.slots.forEach((slot, index) => {
      let node = ui.slotNodes.get(slot.number);
      if (!node) {
        node = fromTemplate("tpl-slot");
        const number = slot.number;
        const button = find(node, ".slot__vend"); // rendered for staff only
        if (button) button.addEventListener("click", () => vend(number, button));
        ui.slotNodes.set(number, node);
      }
      fillSlot(node, slot);
      if (list.children[index] !== node) list.insertBefore(node, list.children[index] || null);
    });
    $("slots-empty").hidden = model.slots.length > 0 || !model.selected;
  }

  function badge(text, modifier) {
    return el("span", `badge badge--${modifier}`, text);
  }

  function fillSlot(node, slot) {
    const level = slotLevel(slot);
    node.dataset.level = level;
    find(node, ".slot__number").textContent = `Slot ${slot.number}`;
    const marks = [];
    if (level === "empty") marks.push(badge("Empty", "empty"));
    else if (level === "low") marks.push(badge("Low stock", "low"));
    if (!slot.enabled) marks.push(badge("Disabled", "bad"));
    if (slot.needs_attention) marks.push(badge("Check slot", "bad"));
    find(node, ".slot__marks").replaceChildren(...marks);
    find(node, ".slot__product").textContent = slot.product || "No product";
    find(node, ".slot__price").textContent = slot.price === null ? "" : `Price ${slot.price}`;
    const share = slot.capacity > 0 ? Math.min(1, slot.quantity / slot.capacity) : 0;
    find(node, ".bar__fill").style.width = `${(share * 100).toFixed(1)}%`;
    find(node, ".slot__qty").textContent = `${slot.quantity} of ${slot.capacity} left`;
    node.dataset.slot = String(slot.number);
    node.dataset.product = slot.product || "";
    fillVendButton(node);
  }

  // A vend pressed here: which slot card shows its progress.
  const watchedVends = new Map();

  async function vend(slotNumber, button) {
    const deviceId = model.selected;
    showNotice("slots-notice", "");
    setSlotStatus(slotNumber, "Requesting…", "");
    button.dataset.busy = "true";
    button.disabled = true;
    const result = await request(config.vendUrl, { method: "POST", data: { device_id: deviceId, slot: slotNumber } });
    button.dataset.busy = "false";
    fillVendButton(button.closest(".slot"));
    if (!result.ok) {
      setSlotStatus(slotNumber, result.body.detail, "bad");
      return;
    }
    const txn = result.body;
    watchedVends.set(txn.id, { deviceId, slot: slotNumber });
    onTransaction({
      id: txn.id,
      state: txn.state,
      device_id: txn.device_id,
      slot: txn.slot_id,
      product: txn.product ? txn.product.name : "",
      failure_reason: txn.failure_reason,
      created_at: txn.created_at,
      updated_at: txn.updated_at,
    });
  }

  function setSlotStatus(slotNumber, text, tone) {
    const node = ui.slotNodes.get(slotNumber);
    if (!node) return;
    const status = find(node, ".slot__status");
    status.textContent = text;
    status.dataset.tone = tone;
  }

  function renderVendStatus(txn) {
    const watch = watchedVends.get(txn.id);
    if (!watch || watch.deviceId !== model.selected) return;
    const path = txn.path.map((state) => STATE_LABEL[state] || state).join(" → ");
    const tone = { succeeded: "ok", failed: "bad", expired: "bad", cancelled: "bad", unconfirmed: "warn" }[txn.state] || "";
    const reason = txn.failure_reason ? `: ${txn.failure_reason}` : "";
    setSlotStatus(watch.slot, `${path}${reason}`, tone);
  }

  // --- Rendering: connections ----------------------------------------------------------

  /* A heartbeat older than the stale limit means the process died without a word. */
  function serviceState(service) {
    if (service.state === "never_started" || !service.beat_at) return "never_started";
    if (service.stopped_at) return "stopped";
    const beat = parseTime(service.beat_at);
    if (beat === null || serverNow() - beat > model.serviceStaleAfter * 1000) return "stopped";
    return "running";
  }

  function renderServices() {
    const items = model.services.map((service) => {
      const state = serviceState(service);
      const item = el("li", "service");
      item.dataset.service = service.name;
      item.dataset.state = state;
      const head = el("div", "service__head");
      head.append(
        el("span", "service__name", SERVICE_LABEL[service.name] || service.name),
        badge(SERVICE_STATE_LABEL[state], { running: "ok", stopped: "bad", never_started: "idle" }[state]),
      );
      item.append(head);
      const facts = el("p", "service__facts");
      if (state === "never_started") {
        facts.append(el("span", "", "Not started yet: run "), el("code", "", `manage.py ${service.command}`), el("span", "", "."));
      } else {
        const when = el("time");
        if (state === "running") {
          setTime(when, service.started_at, true);
          facts.append(el("span", "", `pid ${service.pid} on ${service.host}, started `), when);
        } else {
          setTime(when, service.stopped_at || service.beat_at, true);
          const how = service.stopped_at ? "stopped " : "no heartbeat since ";
          facts.append(el("span", "", `pid ${service.pid} on ${service.host}, ${how}`), when);
        }
        const listening = service.detail && service.detail.listening;
        if (listening) facts.append(el("small", "feed__detail", ` listening on ${listening}`));
      }
      item.append(facts);
      return item;
    });
    $("services").replaceChildren(...items);
  }

  function renderDiscovery() {
    const node = $("discovery");
    const discovery = model.discovery || {};
    if (!discovery.last_request_at) {
      node.replaceChildren(
        el("span", "", "No discovery request seen yet (is "),
        el("code", "", "run_discovery"),
        el("span", "", " running?)."),
      );
      return;
    }
    const time = el("time");
    setTime(time, discovery.last_request_at, true);
    const parts = [el("span", "", "Last request seen "), time];
    if (discovery.last_request_from) parts.push(el("span", "", ` from ${discovery.last_request_from}`));
    parts.push(el("span", "", "."));
    if (discovery.message) parts.push(el("small", "feed__detail", ` ${discovery.message}`));
    node.replaceChildren(...parts);
  }

  function renderPorts() {
    const rows = model.ports.map((port) => {
      const row = el("tr");
      const where = el("td");
      where.append(el("code", "", port.path));
      const about = [port.description, port.usb_id, port.likely_esp32 ? "ESP32" : ""].filter(Boolean).join(" · ");
      if (about) where.append(el("small", "", about));
      const state = el("td");
      const label = !port.present ? "Absent" : port.is_open ? "Open" : "Closed";
      state.append(badge(label, port.is_open ? "ok" : port.present ? "idle" : "bad"));
      if (port.last_error) state.append(el("small", "port__error", port.last_error));
      row.append(where, state, el("td", "port__machine", port.device_id || "—"), el("td", "", port.requested));
      if (!config.canPorts) return [row];
      // The requests get a row of their own under the port, so the buttons never push the
      // table wider than a phone or the narrow Connections column (they wrap instead).
      row.classList.add("port__row--has-actions");
      const actions = el("td", "port__actions-cell");
      actions.colSpan = 4;
      const group = el("div", "port__actions");
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", `Requests for ${port.path}`);
      for (const [value, text] of PORT_REQUESTS) {
        const button = el("button", "button button--quiet", text);
        button.type = "button";
        button.setAttribute("aria-pressed", String(port.requested === value));
        button.addEventListener("click", () => requestPort(port.path, value, button));
        group.append(button);
      }
      actions.append(group);
      const actionsRow = el("tr", "port__actions-row");
      actionsRow.append(actions);
      return [row, actionsRow];
    });
    const focusedPath = document.activeElement && document.activeElement.closest("#ports") ? portFocus() : null;
    $("ports").replaceChildren(...rows.flat());
    if (focusedPath !== null) restorePortFocus(focusedPath);
    $("ports-table").hidden = model.ports.length === 0;
    $("ports-empty").hidden = model.ports.length > 0;
  }

  // Port rows are rebuilt on every poll; keep the keyboard where it was.
  function portFocus() {
    const button = document.activeElement;
    const index = Array.from($("ports").querySelectorAll("button")).indexOf(button);
    return index >= 0 ? index : null;
  }

  function restorePortFocus(index) {
    const button = $("ports").querySelectorAll("button")[index];
    if (button) button.focus();
  }

  async function requestPort(path, value, button) {
    showNotice("ports-notice", "");
    button.disabled = true;
    const result = await request(config.portUrl, { method: "POST", data: { path, request: value } });
    button.disabled = false;
    if (!result.ok) {
      showNotice("ports-notice", result.body.detail);
      return;
    }
    const index = model.ports.findIndex((p) => p.path === path);
    if (index >= 0) model.ports[index] = result.body;
    renderPorts();
  }

  // --- Rendering: feeds ----------------------------------------------------------------

  function renderFeedFilter() {
    const select = $("feed-device");
    const wanted = ["", ...model.machines.map((m) => m.device_id)];
    const current = Array.from(select.options).map((o) => o.value);
    if (wanted.join("\n") === current.join("\n")) return;
    const options = [el("option", "", "All machines")];
    options[0].value = "";
    for (const machine of model.machines) {
      const option = el("option", "", machineLabel(machine));
      option.value = machine.device_id;
      options.push(option);
    }
    select.replaceChildren(...options);
    select.value = wanted.includes(ui.feedDevice) ? ui.feedDevice : "";
    ui.feedDevice = select.value;
  }

  function feedChanged() {
    if (ui.paused) {
      ui.pending += 1;
      $("feed-pending").textContent = `${ui.pending} new while paused`;
      return;
    }
    renderFeeds();
  }

  function visible(items) {
    const wanted = ui.feedDevice;
    return items.filter((item) => !wanted || item.device_id === wanted).slice(0, model.feedLimit);
  }

  function renderFeeds() {
    // Rows are rebuilt; keep the keyboard on the button it was on.
    const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focusKey : "";
    const txns = visible(model.transactions).map(transactionItem);
    $("transactions").replaceChildren(...txns);
    if (focused) {
      const again = Array.from($("transactions").querySelectorAll("button")).find((b) => b.dataset.focusKey === focused);
      if (again) again.focus();
    }
    $("transactions").hidden = txns.length === 0;
    $("transactions-empty").hidden = txns.length > 0;
    const logs = visible(model.logs).map(logItem);
    $("logs").replaceChildren(...logs);
    $("logs").hidden = logs.length === 0;
    $("logs-empty").hidden = logs.length > 0;
  }

  function transactionItem(txn) {
    const item = el("li", "feed__item");
    const time = el("time", "feed__time");
    setTime(time, txn.created_at || txn.updated_at, false);
    const main = el("span", "feed__main");
    main.append(el("span", "", `Slot ${txn.slot} · ${txn.product || "?"} `), el("span", "feed__device", txn.device_id));
    item.dataset.transaction = txn.id;
    item.append(time, main, el("span", `state state--${txn.state}`, STATE_LABEL[txn.state] || txn.state));
    if (txn.failure_reason) item.append(el("span", "feed__detail", txn.failure_reason));
    if (config.canResolve && txn.state === "unconfirmed") {
      const group = el("div", "txn__resolve");
      group.setAttribute("role", "group");
      group.setAttribute("aria-label", `Settle the unconfirmed vend of slot ${txn.slot} on ${txn.device_id}`);
      for (const [dispensed, text] of [[true, "Dispensed"], [false, "Not dispensed"]]) {
        const button = el("button", "button button--quiet", text);
        button.type = "button";
        button.dataset.focusKey = `resolve:${txn.id}:${dispensed}`;
        button.addEventListener("click", () => resolveVend(txn.id, dispensed, button));
        group.append(button);
      }
      item.append(group);
    }
    return item;
  }

  async function resolveVend(transactionId, dispensed, button) {
    showNotice("feeds-notice", "");
    button.disabled = true;
    const result = await request(config.resolveUrl, {
      method: "POST",
      data: { transaction_id: transactionId, dispensed },
    });
    button.disabled = false;
    if (!result.ok) {
      showNotice("feeds-notice", result.body.detail);
      return;
    }
    onTransaction(result.body);
  }

  function logItem(entry) {
    const item = el("li", "feed__item");
    item.dataset.level = entry.level;
    const time = el("time", "feed__time");
    setTime(time, entry.created_at, false);
    const inbound = entry.direction === "in";
    const direction = el("span", `dir dir--${inbound ? "in" : "out"}`, inbound ? "IN" : "OUT");
    direction.title = inbound ? "Device → server" : "Server → device";
    item.append(time, el("span", "feed__main", entry.message), direction);
    const detail = [entry.device_id || "unknown device", entry.transport, entry.endpoint].filter(Boolean).join(" · ");
    item.append(el("span", "feed__detail", detail));
    return item;
  }

  $("feed-device").addEventListener("change", (event) => {
    ui.feedDevice = event.target.value;
    loadFeeds();
  });

  $("feed-pause").addEventListener("click", (event) => {
    ui.paused = !ui.paused;
    const button = event.currentTarget;
    button.setAttribute("aria-pressed", String(ui.paused));
    button.textContent = ui.paused ? "Resume" : "Pause";
    if (!ui.paused) {
      ui.pending = 0;
      $("feed-pending").textContent = "";
      renderFeeds();
    }
  });

  // --- Charts --------------------------------------------------------------------------

  /* Keep 24 hourly buckets ending with the current hour (the page may stay open for days). */
  function rollHours() {
    if (model.hours.length === 0) return;
    const now = serverNow();
    let last = model.hours[model.hours.length - 1];
    while (now >= last.start + HOUR_MS) {
      last = { start: last.start + HOUR_MS, succeeded: 0, failed: 0 };
      model.hours.push(last);
    }
    const keep = 24;
    if (model.hours.length > keep) model.hours.splice(0, model.hours.length - keep);
  }

  function countInChart(txn) {
    if ((txn.state !== "succeeded" && txn.state !== "failed") || model.charted.has(txn.id)) return;
    model.charted.add(txn.id);
    rollHours();
    const created = parseTime(txn.created_at) ?? parseTime(txn.updated_at);
    const bucket = model.hours.find((h) => created >= h.start && created < h.start + HOUR_MS);
    if (bucket) {
      bucket[txn.state] += 1;
      renderVendsChart();
    }
  }

  /* The vends axis counts whole vends: a step of 1, 2, 2.5, 5 x 10^n that is a whole number,
     at most 5 steps up to the first gridline at or above the busiest hour. */
  function vendsScale(value) {
    if (value <= 4) return { top: Math.max(1, value), step: 1 };
    const raw = value / 5;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    let step = Math.ceil(raw);
    for (const factor of [1, 2, 2.5, 5, 10]) {
      if (Number.isInteger(factor * magnitude) && factor * magnitude >= raw) {
        step = factor * magnitude;
        break;
      }
    }
    return { top: Math.ceil(value / step) * step, step };
  }

  /* Charts are drawn at the pixel width they get, so their text stays readable on a phone. */
  function chartWidth(id) {
    return Math.max(280, Math.round($(id).clientWidth || 720));
  }

  function renderVendsChart() {
    rollHours();
    const width = chartWidth("vends-chart");
    const height = 220;
    const margin = { top: 12, right: 8, bottom: 26, left: 34 };
    const plotW = width - margin.left - margin.right;
    const plotH = height - margin.top - margin.bottom;
    const hours = model.hours;
    const totals = hours.map((h) => h.succeeded + h.failed);
    const sum = (key) => hours.reduce((n, h) => n + h[key], 0);
    const succeeded = sum("succeeded");
    const failed = sum("failed");
    const { top, step } = vendsScale(Math.max(0, ...totals));
    const summary = `${succeeded} succeeded, ${failed} failed in the last 24 hours`;
    $("vends-summary").textContent = summary;

    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": `Vends per hour: ${summary}` });
    for (let value = 0; value <= top; value += step) {
      const y = margin.top + plotH - (value / top) * plotH;
      root.append(svg("line", { class: "chart__grid", x1: margin.left, x2: width - margin.right, y1: y, y2: y }));
      root.append(svg("text", { class: "chart__tick", x: margin.left - 6, y: y + 4, "text-anchor": "end" }, String(value)));
    }
    const slotW = hours.length ? plotW / hours.length : plotW;
    const barW = Math.max(2, slotW * 0.7);
    hours.forEach((hour, index) => {
      const x = margin.left + index * slotW + (slotW - barW) / 2;
      const group = svg("g");
      const okH = (hour.succeeded / top) * plotH;
      const badH = (hour.failed / top) * plotH;
      const base = margin.top + plotH;
      if (okH > 0) group.append(svg("rect", { class: "chart__succeeded", x, y: base - okH, width: barW, height: okH }));
      if (badH > 0) group.append(svg("rect", { class: "chart__failed", x, y: base - okH - badH, width: barW, height: badH }));
      // An invisible full-height target, so every hour has a tooltip.
      group.append(svg("rect", { x, y: margin.top, width: barW, height: plotH, fill: "transparent" }));
      const from = hourFormat.format(hour.start);
      group.append(svg("title", {}, `${from}: ${hour.succeeded} succeeded, ${hour.failed} failed`));
      root.append(group);
      if (index % (slotW < 24 ? 6 : 3) === 0) {
        root.append(svg("text", { x: x + barW / 2, y: height - 8, "text-anchor": "middle" }, from));
      }
    });
    if (succeeded + failed === 0) {
      root.append(svg("text", { class: "chart__empty-text", x: margin.left + plotW / 2, y: margin.top + plotH / 2, "text-anchor": "middle" }, "No vends in the last 24 hours"));
    }
    $("vends-chart").replaceChildren(root);
  }

  function renderStockChart() {
    const slots = model.slots;
    const width = chartWidth("stock-chart");
    const row = 26;
    const margin = { top: 6, right: 64, bottom: 6, left: 64 };
    const height = Math.max(60, margin.top + margin.bottom + slots.length * row);
    const plotW = width - margin.left - margin.right;
    const most = Math.max(1, ...slots.map((s) => s.capacity));
    const low = slots.filter((s) => slotLevel(s) !== "ok").length;
    const label = slots.length ? `Stock per slot: ${slots.length} slots, ${low} low or empty` : "Stock per slot: no slots";
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
    if (slots.length === 0) {
      root.append(svg("text", { class: "chart__empty-text", x: width / 2, y: height / 2 + 4, "text-anchor": "middle" }, "No slots to show"));
    }
    slots.forEach((slot, index) => {
      const y = margin.top + index * row;
      const barH = row - 10;
      const group = svg("g");
      group.append(svg("text", { x: margin.left - 8, y: y + barH - 3, "text-anchor": "end" }, `Slot ${slot.number}`));
      group.append(svg("rect", { class: "chart__capacity", x: margin.left, y, width: (slot.capacity / most) * plotW, height: barH, rx: 3 }));
      const filled = (Math.min(slot.quantity, slot.capacity) / most) * plotW;
      if (filled > 0) {
        const kind = slotLevel(slot) === "ok" ? "chart__stock" : "chart__stock chart__stock--low";
        group.append(svg("rect", { class: kind, x: margin.left, y, width: filled, height: barH, rx: 3 }));
      }
      group.append(svg("text", { x: width - margin.right + 8, y: y + barH - 3 }, `${slot.quantity}/${slot.capacity}`));
      group.append(svg("title", {}, `Slot ${slot.number} (${slot.product || "no product"}): ${slot.quantity} of ${slot.capacity}`));
      root.append(group);
    });
    $("stock-chart").replaceChildren(root);
  }

  // --- The socket ----------------------------------------------------------------------

  let socket = null;
  let attempts = 0;
  let retryTimer = null;

  function setConnection(state, text) {
    const node = $("connection");
    node.dataset.state = state;
    find(node, ".conn__text").textContent = text;
  }

  function connect() {
    clearTimeout(retryTimer);
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    setConnection("connecting", attempts ? "Reconnecting…" : "Connecting…");
    socket = new WebSocket(`${scheme}//${window.location.host}${config.wsPath}`);
    socket.addEventListener("open", () => {
      attempts = 0;
      setConnection("live", "Live");
      // Everything after the state we hold, including what happened while we were away.
      socket.send(JSON.stringify({ type: "catch_up", since: model.lastEventId }));
    });
    socket.addEventListener("message", (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      handleMessage(message);
    });
    socket.addEventListener("close", () => {
      socket = null;
      scheduleReconnect();
    });
  }

  async function scheduleReconnect() {
    attempts += 1;
    if (attempts >= 3) {
      // Refused sockets look like network errors; the API tells us if the session ended.
      const check = await request(config.machinesUrl);
      if (check.status === 401 || check.status === 403) {
        setConnection("closed", "Logged out: reload the page to log in");
        return;
      }
    }
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(attempts - 1, 5)) * (0.75 + Math.random() * 0.5);
    setConnection("retrying", `Disconnected: retrying in ${Math.round(delay / 1000)} s`);
    retryTimer = setTimeout(connect, delay);
  }

  // --- Start ---------------------------------------------------------------------------

  function refreshRelativeTimes() {
    renderServices(); // a heartbeat going stale raises no event
    for (const node of document.querySelectorAll("time[data-relative]")) {
      node.textContent = formatAgo(parseTime(node.getAttribute("datetime")));
    }
  }

  const initial = JSON.parse($("dashboard-state").textContent);
  applyState(initial);
  connect();
  setInterval(pollMachines, POLL_MS);
  setInterval(refreshRelativeTimes, 5000);
  setInterval(renderVendsChart, 60 * 1000);
  if ("ResizeObserver" in window) {
    let lastWidth = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width === lastWidth) return;
      lastWidth = width;
      renderVendsChart();
      renderStockChart();
    }).observe($("vends-chart"));
  }
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) pollMachines();
  });
})();
