// streamhtml's live page: start a paced stream, chart what arrives against time, and say at
// the end whether something between this browser and the service buffered it. HTML blocks and
// NDJSON lines are read with fetch, read by read from the ReadableStream; SSE events with the
// browser's own EventSource, reconnects included; WebSocket messages with the browser's own
// WebSocket. It also shows the platform queue time the app reports in its Server-Timing header
// (fetch only: an EventSource or a WebSocket shows no headers).
//
// The verdict follows the same rules, with the same thresholds, as streamhtml/probe.py. It is
// judged on arrival times, never on the number of reads: proxies may re-chunk a stream (gorouter
// sends an unpaced one in about 8 KiB pieces) without holding it back. For HTML it counts bytes;
// for SSE, NDJSON and WebSocket whole events, lines and messages.
"use strict";

(() => {
  const MIN_SLEEP_MS = 50; // shorter pauses drown in network jitter: nothing to judge
  const PAUSE_SEEN = 0.5; // share of sleep_ms between two blocks' arrivals for a pause to count
  const MOST = 0.5; // more than this share of the pauses missing: the blocks came bunched
  const SHORT_SPREAD = 0.5; // arrivals spread over less than this share of the paced duration
  const SLOW_START_S = 1.0; // a first byte later than this (and late for the pacing): a note
  const RATE_WINDOW_S = 1.0; // the current rate: bytes over the last second
  const MAX_DOTS = 2000; // beyond this many reads the chart draws the line alone

  // What each shape streams, where it is asked for, and what the verdict counts in it: as
  // probe.py's SHAPES, so both word their verdicts alike.
  const SHAPES = {
    html: {
      path: "streamhtml",
      items: "blocks",
      counted: "bytes",
      countedOne: "byte",
      nothing: "no body bytes",
    },
    sse: {
      path: "sse",
      items: "events",
      counted: "events",
      countedOne: "event",
      nothing: "no events",
    },
    ndjson: {
      path: "ndjson",
      items: "lines",
      counted: "lines",
      countedOne: "line",
      nothing: "no lines",
    },
    ws: {
      path: "ws/stream",
      items: "messages",
      counted: "messages",
      countedOne: "message",
      nothing: "no messages",
    },
  };
  const shapeOf = (pacing) => SHAPES[pacing.shape || "html"];
  // What one item adds to the count: a block's bytes, or one event or line.
  const perItem = (pacing) => (shapeOf(pacing) === SHAPES.html ? pacing.blockSize : 1);

  // arrivals: [[seconds since the request, bytes (or events, lines)], ...];
  // pacing: {nblocks, blockSize, sleepMs, shape}
  function summarize(arrivals, pacing) {
    const list = arrivals.filter(([, n]) => n > 0).sort((a, b) => a[0] - b[0]);
    if (list.length === 0) {
      return { total: 0, reads: 0, first: 0, last: 0, blockTimes: [], burst: 0, burstAt: 0 };
    }
    const total = list.reduce((sum, [, n]) => sum + n, 0);
    // Block k is in once (k + 1) / nblocks of the bytes are: works for any byte count.
    const blockTimes = [];
    let received = 0;
    for (const [t, n] of list) {
      received += n;
      while (
        blockTimes.length < pacing.nblocks &&
        received * pacing.nblocks >= total * (blockTimes.length + 1)
      ) {
        blockTimes.push(t);
      }
    }
    const window = pacing.sleepMs / 2000;
    let burst = 0;
    let burstAt = list[0][0];
    let start = 0;
    let inWindow = 0;
    for (const [t, n] of list) {
      inWindow += n;
      while (t - list[start][0] > window) {
        inWindow -= list[start][1];
        start += 1;
      }
      if (inWindow > burst) {
        burst = inWindow;
        burstAt = t;
      }
    }
    return {
      total,
      reads: list.length,
      first: list[0][0],
      last: list[list.length - 1][0],
      blockTimes,
      burst,
      burstAt,
    };
  }

  function judge(arrivals, pacing) {
    const shape = shapeOf(pacing);
    if (pacing.nblocks < 2 || pacing.sleepMs < MIN_SLEEP_MS) {
      return {
        state: "unknown",
        reasons: [
          `nblocks=${pacing.nblocks} and sleep_ms=${pacing.sleepMs} leave no pauses to look ` +
            `for: use at least 2 ${shape.items} and ${MIN_SLEEP_MS} ms`,
        ],
      };
    }
    const line = summarize(arrivals, pacing);
    if (line.total === 0) {
      return { state: "unknown", reasons: [`${shape.nothing} arrived`] };
    }
    const sleepS = pacing.sleepMs / 1000;
    const pauses = pacing.nblocks - 1;
    const pacedSpread = (pauses * pacing.sleepMs) / 1000;
    const spread = line.last - line.first;
    let seen = 0;
    for (let k = 1; k < line.blockTimes.length; k += 1) {
      if (line.blockTimes[k] - line.blockTimes[k - 1] >= sleepS * PAUSE_SEEN) seen += 1;
    }
    const missing = pauses - seen;
    const spreadReason =
      `the ${shape.counted} arrived over ${spread.toFixed(2)} s; paced, they take ` +
      `${pacedSpread.toFixed(2)} s (${pauses} pauses of ${pacing.sleepMs} ms)`;
    const buffered = [];
    if (missing > MOST * pauses) {
      buffered.push(
        `${missing} of the ${pauses} pauses between ${shape.items} were missing: ` +
          `the ${shape.items} arrived bunched together`,
      );
    }
    if (spread < SHORT_SPREAD * pacedSpread) buffered.push(spreadReason);
    if (line.burst * 2 > line.total) {
      buffered.push(
        `${percent(line.burst, line.total)} of the ${shape.counted} arrived in one burst, ` +
          `within ${Math.floor(pacing.sleepMs / 2)} ms, ending ${line.burstAt.toFixed(2)} s ` +
          "after the request",
      );
    }
    const late = line.first > Math.max(SLOW_START_S, SHORT_SPREAD * pacedSpread);
    if (buffered.length) {
      if (late) {
        buffered.push(
          `the first ${shape.countedOne} came only after ${line.first.toFixed(2)} s, ` +
            "held back with the rest",
        );
      }
      return { state: "buffered", reasons: buffered };
    }
    const reasons = [
      `${seen} of the ${pauses} pauses between ${shape.items} came through`,
      spreadReason,
    ];
    if (late) {
      reasons.push(
        `note: the first ${shape.countedOne} took ${line.first.toFixed(2)} s, a slow start, ` +
          "but the pauses after it came through",
      );
    }
    return { state: "streams", reasons };
  }

  // --- the platform's queue time ------------------------------------------------------------

  // A Server-Timing duration: plain decimal milliseconds, no sign (as probe.py's DURATION).
  const DURATION = /^(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$/;

  // The text split at each separator outside a "quoted string" (where \ escapes).
  function splitUnquoted(text, separator) {
    const parts = [];
    let current = "";
    let quoted = false;
    let escaped = false;
    for (const char of text) {
      if (escaped) {
        escaped = false;
      } else if (quoted && char === "\\") {
        escaped = true;
      } else if (char === '"') {
        quoted = !quoted;
      } else if (char === separator && !quoted) {
        parts.push(current);
        current = "";
        continue;
      }
      current += char;
    }
    parts.push(current);
    return parts;
  }

  function durationMs(value) {
    let text = value.trim();
    if (text.length >= 2 && text.startsWith('"') && text.endsWith('"')) {
      text = text.slice(1, -1).trim();
    }
    if (!DURATION.test(text)) return null;
    const duration = Number(text);
    return Number.isFinite(duration) ? duration : null;
  }

  // The `queue` metric's duration in a Server-Timing header, or null. The app answers
  // `Server-Timing: queue;dur=12.5` when gorouter's X-Request-Start reached it: the time the
  // request spent in the platform before the app saw it. Read as probe.py's platform_queue_ms.
  function platformQueueMs(serverTiming) {
    for (const metric of splitUnquoted(serverTiming || "", ",")) {
      const [name, ...params] = splitUnquoted(metric, ";");
      if (name.trim().toLowerCase() !== "queue") continue;
      for (const param of params) {
        const at = param.indexOf("=");
        const key = at < 0 ? param : param.slice(0, at);
        if (key.trim().toLowerCase() === "dur") {
          return durationMs(at < 0 ? "" : param.slice(at + 1));
        }
      }
      return null;
    }
    return null;
  }

  function percent(part, whole) {
    return whole ? `${Math.round((100 * part) / whole)}%` : "-";
  }

  function formatBytes(n) {
    return n.toLocaleString("en-US");
  }

  function formatRate(perS, pacing) {
    const shape = shapeOf(pacing);
    if (shape !== SHAPES.html) return `${perS.toFixed(1)} ${shape.counted}/s`;
    const bytesPerS = perS;
    if (bytesPerS < 1024) return `${bytesPerS.toFixed(0)} B/s`;
    if (bytesPerS < 1024 * 1024) return `${(bytesPerS / 1024).toFixed(1)} KiB/s`;
    return `${(bytesPerS / 1024 / 1024).toFixed(1)} MiB/s`;
  }

  function formatSeconds(s) {
    return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
  }

  // --- the chart --------------------------------------------------------------------------

  const COLORS = {
    text: "#1b1f23",
    muted: "#4f5861",
    grid: "#e1e4e8",
    axis: "#6a737d",
    received: "#0b5cad",
    expected: "#6a737d",
  };

  function niceStep(range, ticks) {
    const raw = range / ticks;
    const power = 10 ** Math.floor(Math.log10(raw));
    const steps = [1, 2, 2.5, 5, 10].map((m) => m * power);
    return steps.find((s) => s >= raw) || steps[steps.length - 1];
  }

  function drawChart(canvas, run) {
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || 760;
    const cssHeight = Math.max(Math.round(cssWidth * 0.4), 200);
    if (
      canvas.width !== Math.round(cssWidth * ratio) ||
      canvas.height !== Math.round(cssHeight * ratio)
    ) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, cssWidth, cssHeight);
    const pad = { left: 64, right: 16, top: 14, bottom: 40 };
    const w = cssWidth - pad.left - pad.right;
    const h = cssHeight - pad.top - pad.bottom;
    const total = run ? run.pacing.nblocks * perItem(run.pacing) : 0;
    const pacedSpread = run ? ((run.pacing.nblocks - 1) * run.pacing.sleepMs) / 1000 : 0;
    const lastT = run && run.arrivals.length ? run.arrivals[run.arrivals.length - 1][0] : 0;
    const maxT = Math.max(1, pacedSpread * 1.1, run ? run.elapsed : 0, lastT * 1.02);
    const maxY = Math.max(total, run ? run.received : 0, 1);
    const x = (t) => pad.left + (t / maxT) * w;
    const y = (b) => pad.top + h - (b / maxY) * h;

    ctx.font = "12px system-ui, sans-serif";
    ctx.lineWidth = 1;
    // Grid and tick labels.
    const tStep = niceStep(maxT, 8);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = 0; t <= maxT + 1e-9; t += tStep) {
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(x(t), pad.top);
      ctx.lineTo(x(t), pad.top + h);
      ctx.stroke();
      ctx.fillStyle = COLORS.muted;
      ctx.fillText(`${Number(t.toFixed(2))}`, x(t), pad.top + h + 6);
    }
    // Events and lines are whole: no tick between two of them.
    const items = run && perItem(run.pacing) === 1;
    const bStep = items ? Math.max(1, niceStep(maxY, 4)) : niceStep(maxY, 4);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let b = 0; b <= maxY + 1e-9; b += bStep) {
      ctx.strokeStyle = COLORS.grid;
      ctx.beginPath();
      ctx.moveTo(pad.left, y(b));
      ctx.lineTo(pad.left + w, y(b));
      ctx.stroke();
      ctx.fillStyle = COLORS.muted;
      ctx.fillText(formatBytes(b), pad.left - 6, y(b));
    }
    ctx.strokeStyle = COLORS.axis;
    ctx.beginPath();
    ctx.moveTo(pad.left, pad.top);
    ctx.lineTo(pad.left, pad.top + h);
    ctx.lineTo(pad.left + w, pad.top + h);
    ctx.stroke();
    ctx.fillStyle = COLORS.text;
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    ctx.fillText("seconds since the request", pad.left + w / 2, cssHeight - 2);
    ctx.save();
    ctx.translate(12, pad.top + h / 2);
    ctx.rotate(-Math.PI / 2);
    ctx.textBaseline = "middle";
    ctx.fillText(run ? shapeOf(run.pacing).counted : "bytes", 0, 0);
    ctx.restore();
    if (!run) return 0;

    // As sent: item k leaves the service k x sleep_ms after the first.
    const { nblocks, sleepMs } = run.pacing;
    const each = perItem(run.pacing);
    ctx.strokeStyle = COLORS.expected;
    ctx.lineWidth = 1.5;
    ctx.setLineDash([5, 4]);
    ctx.beginPath();
    ctx.moveTo(x(0), y(0));
    for (let k = 0; k < nblocks; k += 1) {
      const t = (k * sleepMs) / 1000;
      ctx.lineTo(x(t), y(k * each));
      ctx.lineTo(x(t), y((k + 1) * each));
    }
    ctx.stroke();
    ctx.setLineDash([]);

    // Received: a step for each read.
    ctx.strokeStyle = COLORS.received;
    ctx.fillStyle = COLORS.received;
    ctx.lineWidth = 2.5;
    ctx.beginPath();
    ctx.moveTo(x(0), y(0));
    let sum = 0;
    for (const [t, n] of run.arrivals) {
      ctx.lineTo(x(t), y(sum));
      sum += n;
      ctx.lineTo(x(t), y(sum));
    }
    ctx.lineTo(x(run.done ? lastT : run.elapsed), y(sum));
    ctx.stroke();
    // A dot per read, while there are few enough to tell apart.
    if (run.arrivals.length <= MAX_DOTS) {
      sum = 0;
      for (const [t, n] of run.arrivals) {
        sum += n;
        ctx.beginPath();
        ctx.arc(x(t), y(sum), 3, 0, 2 * Math.PI);
        ctx.fill();
      }
    }
    return run.arrivals.length;
  }

  // --- the page ---------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function setCount(id, value, text) {
    const el = $(id);
    el.dataset.value = String(value);
    el.textContent = text;
  }

  function setVerdict(state, text, reasons) {
    const box = $("verdict");
    box.dataset.state = state;
    $("verdict-text").textContent = text;
    const list = $("reasons");
    list.replaceChildren(
      ...(reasons || []).map((reason) => {
        const item = document.createElement("li");
        item.textContent = reason;
        return item;
      }),
    );
  }

  function showQueue(serverTiming) {
    const queueMs = platformQueueMs(serverTiming);
    const el = $("queue");
    el.dataset.value = queueMs === null ? "" : String(queueMs);
    el.textContent = queueMs === null ? "–" : `${queueMs.toFixed(1)} ms`;
  }

  function headline(state, shape) {
    return {
      streams: `STREAMS: the ${shape.items} arrived with the pauses they were sent with.`,
      buffered: "BUFFERED: something between this browser and the service held the stream back.",
      unknown: "UNKNOWN: this pacing cannot tell streaming from buffering.",
    }[state];
  }

  let current = null; // the run in progress: {pacing, arrivals, received, elapsed, ...}

  function readPacing() {
    const value = (id) => Number.parseInt($(id).value, 10);
    return {
      nblocks: value("nblocks"),
      blockSize: value("block_size"),
      sleepMs: value("sleep_ms"),
      shape: SHAPES[$("shape").value] ? $("shape").value : "html",
    };
  }

  function render() {
    const run = current;
    if (!run) return;
    run.elapsed = run.done ? run.elapsed : (performance.now() - run.t0) / 1000;
    setCount("received", run.received, formatBytes(run.received));
    setCount("reads", run.reads, String(run.reads));
    const since = run.elapsed - RATE_WINDOW_S;
    const recent = run.arrivals.filter(([t]) => t > since).reduce((s, [, n]) => s + n, 0);
    const rate = run.done
      ? run.received / Math.max(run.elapsed, 1e-3)
      : recent / Math.min(RATE_WINDOW_S, Math.max(run.elapsed, 1e-3));
    $("rate-label").textContent = run.done ? "Average rate" : "Current rate";
    $("rate").textContent = formatRate(rate, run.pacing);
    $("elapsed").textContent = formatSeconds(run.elapsed);
    const chart = $("chart");
    chart.dataset.points = String(drawChart(chart, run));
  }

  function tick() {
    if (!current || current.done) return;
    render();
    window.requestAnimationFrame(tick);
  }

  async function errorDetail(response) {
    try {
      const body = await response.json();
      return body.detail || body.error || "";
    } catch {
      return "";
    }
  }

  // The body read by read with fetch: bytes for HTML, whole lines for NDJSON.
  async function readBody(run, url) {
    const response = await fetch(url, { cache: "no-store", signal: run.abort.signal });
    showQueue(response.headers.get("Server-Timing"));
    if (!response.ok) {
      const detail = await errorDetail(response);
      return ["error", `the service refused: HTTP ${response.status}. ${detail}`, []];
    }
    const countLines = run.pacing.shape === "ndjson";
    const reader = response.body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      const t = (performance.now() - run.t0) / 1000;
      if (done) break;
      if (run.reads === 0) $("ttfb").textContent = formatSeconds(t);
      run.reads += 1;
      const count = countLines ? newlines(value) : value.byteLength;
      if (count) {
        run.arrivals.push([t, count]);
        run.received += count;
      }
    }
    return null;
  }

  function newlines(bytes) {
    let count = 0;
    for (const byte of bytes) if (byte === 10) count += 1;
    return count;
  }

  // The events with the browser's own EventSource. It reconnects by itself when the stream is
  // cut, sending Last-Event-ID, and would reconnect after the service's normal end too: the
  // page closes it once event nblocks is in.
  function readEvents(run, url) {
    return new Promise((resolve) => {
      const { nblocks } = run.pacing;
      const source = new EventSource(url);
      let opened = 0;
      const finish = (how) => {
        source.close();
        resolve(how);
      };
      run.abort.signal.addEventListener("abort", () => finish("stopped"));
      source.addEventListener("open", () => {
        opened += 1;
        setCount("reconnects", opened - 1, String(opened - 1));
      });
      source.addEventListener("block", (event) => {
        const t = (performance.now() - run.t0) / 1000;
        if (run.reads === 0) $("ttfb").textContent = formatSeconds(t);
        run.reads += 1;
        run.arrivals.push([t, 1]);
        run.received += 1;
        // The last one: the service ends the stream, which the EventSource would take as a
        // cut and reconnect after.
        if (Number(event.lastEventId) >= nblocks) finish("complete");
      });
      source.addEventListener("error", () => {
        if (source.readyState === EventSource.CLOSED) {
          finish(opened ? "failed" : "refused");
        } else if (nblocks === 0) {
          finish("complete"); // the stream ended with no event to wait for
        }
        // Otherwise the browser reconnects by itself, after the stream's retry delay.
      });
    });
  }

  // An EventSource never shows why it was refused: ask once more with fetch.
  async function whyRefused(url) {
    const abort = new AbortController();
    try {
      const response = await fetch(url, { cache: "no-store", signal: abort.signal });
      if (response.ok) return "the EventSource failed; the browser's console may say why.";
      return `the service refused: HTTP ${response.status}. ${await errorDetail(response)}`;
    } catch (error) {
      return `the EventSource could not connect: ${error.message}`;
    } finally {
      abort.abort();
    }
  }

  // The messages with the browser's own WebSocket: each binary message counts once whole.
  // The service closes with 1000 after the last; any other close is a failure.
  function readMessages(run, url) {
    return new Promise((resolve) => {
      const wsUrl = new URL(url);
      wsUrl.protocol = wsUrl.protocol === "https:" ? "wss:" : "ws:";
      const socket = new WebSocket(wsUrl);
      socket.binaryType = "arraybuffer";
      let opened = false;
      run.abort.signal.addEventListener("abort", () => {
        socket.close(1000);
        resolve(["stopped"]);
      });
      socket.addEventListener("open", () => {
        opened = true;
      });
      socket.addEventListener("message", () => {
        const t = (performance.now() - run.t0) / 1000;
        if (run.reads === 0) $("ttfb").textContent = formatSeconds(t);
        run.reads += 1;
        run.arrivals.push([t, 1]);
        run.received += 1;
      });
      socket.addEventListener("close", (event) => {
        if (event.code === 1000) resolve(["complete"]);
        else resolve([opened ? "failed" : "refused", event.code, event.reason]);
      });
    });
  }

  async function readWebSocket(run, url) {
    const [how, code, reason] = await readMessages(run, url);
    if (how === "stopped") throw new DOMException("stopped", "AbortError");
    if (how === "refused") {
      // A browser never shows a refused handshake's answer to the page.
      return [
        "error",
        "the WebSocket could not open: the service or a proxy refused it " +
          "(python -m streamhtml.probe --shape ws says why).",
        [],
      ];
    }
    if (how === "failed") {
      return ["error", `the WebSocket was closed with ${code} ${reason || ""}`.trim() + ".", []];
    }
    return null;
  }

  async function readStream(run, url) {
    if (run.pacing.shape === "ws") return readWebSocket(run, url);
    if (run.pacing.shape !== "sse") return readBody(run, url);
    setCount("reconnects", 0, "0");
    const how = await readEvents(run, url);
    if (how === "stopped") throw new DOMException("stopped", "AbortError");
    if (how === "refused") return ["error", await whyRefused(url), []];
    if (how === "failed") {
      return ["error", "the EventSource was closed before the last event.", []];
    }
    return null;
  }

  function verdictOf(run, total) {
    const shape = shapeOf(run.pacing);
    if (run.received !== total) {
      return ["error", `expected ${total} ${shape.counted}, received ${run.received}.`, []];
    }
    const verdict = judge(run.arrivals, run.pacing);
    return [verdict.state, headline(verdict.state, shape), verdict.reasons];
  }

  async function start(event) {
    event.preventDefault();
    if (current && !current.done) return;
    const pacing = readPacing();
    const shape = shapeOf(pacing);
    const query = new URLSearchParams({
      nblocks: String(pacing.nblocks),
      block_size: String(pacing.blockSize),
      sleep_ms: String(pacing.sleepMs),
    });
    const url = new URL(`${shape.path}?${query}`, document.baseURI);
    const run = {
      pacing,
      arrivals: [],
      received: 0,
      reads: 0,
      elapsed: 0,
      done: false,
      abort: new AbortController(),
      t0: performance.now(),
    };
    current = run;
    const total = pacing.nblocks * perItem(pacing);
    setCount("total", total, formatBytes(total));
    $("unit").textContent = shape.counted;
    $("ttfb").textContent = "–";
    // An EventSource and a WebSocket hand over whole events and messages, never bytes.
    $("ttfb-label").textContent = {
      sse: "First event after",
      ws: "First message after",
    }[pacing.shape] || "First byte after";
    setCount("reconnects", "", "–");
    showQueue(null);
    $("start").disabled = true;
    $("stop").disabled = false;
    setVerdict("running", `streaming ${url.pathname}${url.search} …`, []);
    window.requestAnimationFrame(tick);
    let outcome;
    try {
      // An outcome already means the stream was refused or failed; else it is judged.
      outcome = (await readStream(run, url)) || verdictOf(run, total);
      run.elapsed = (performance.now() - run.t0) / 1000;
    } catch (error) {
      run.elapsed = (performance.now() - run.t0) / 1000;
      outcome =
        error.name === "AbortError"
          ? ["stopped", "stopped before the end: no verdict.", []]
          : ["error", `the stream failed: ${error.message}`, []];
    }
    run.done = true;
    render();
    const chart = $("chart");
    chart.setAttribute(
      "aria-label",
      `Chart of ${shape.counted} received against time: ${formatBytes(run.received)} ` +
        `${shape.counted} in ${run.reads} reads over ${formatSeconds(run.elapsed)}. ` +
        outcome[1],
    );
    setVerdict(...outcome);
    $("start").disabled = false;
    $("stop").disabled = true;
  }

  function stop() {
    if (current && !current.done) current.abort.abort();
  }

  function init() {
    $("controls").addEventListener("submit", start);
    $("stop").addEventListener("click", stop);
    window.addEventListener("resize", () => {
      const chart = $("chart");
      chart.dataset.points = String(drawChart(chart, current));
    });
    drawChart($("chart"), null);
  }

  // For the tests and the curious: the same rules as the probe, callable from the console.
  window.streamhtml = { judge, summarize, platformQueueMs };

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
