/* The page's strings in the reader's language, for the other scripts (ES5, no build step).
 *
 * The server embeds them in the page as <script type="application/json" id="i18n"> (built
 * from the same gettext catalogue as the templates, chatapp/web/locale.py):
 *   {"lang": "ru", "plural": [form index for n = 0..199], "messages": {source: translation}}
 * A plural message maps to its list of forms.
 *
 *   var t = window.chatappI18n.t, tn = window.chatappI18n.tn;
 *   t("Send")                                      -> "Отправить"
 *   t("Message #{room}", {room: "lobby"})          -> "Сообщение в #lobby"
 *   tn("{n} new message", "{n} new messages", 5)   -> "5 новых сообщений"
 *
 * Only literal strings in t("...") / tn("...", "...") calls are extracted into the catalogue
 * (python -m chatapp.web.extract): never build the key from pieces. A string without a
 * translation is shown in English, never as nothing. Placeholders are {name}; tn fills {n}.
 * time(d), dateTime(d) and fullDateTime(d) format a Date in the reader's locale.
 *
 * static/strings.js names the client's strings through tr("...") / trn("...", "...") (the
 * extraction keywords, chatapp/web/extract.py), which call t and tn here.
 */
(function (win, doc) {
  "use strict";

  var data = {lang: doc.documentElement.getAttribute("lang") || "en", plural: null, messages: {}};
  var el = doc.getElementById("i18n");
  if (el) {
    try {
      var parsed = JSON.parse(el.textContent || "{}");
      if (parsed && typeof parsed === "object") {
        data.lang = parsed.lang || data.lang;
        data.plural = parsed.plural || null;
        data.messages = parsed.messages || {};
      }
    } catch (e) {
      // A broken block leaves the page in English rather than without any text.
    }
  }

  var has = Object.prototype.hasOwnProperty;

  function format(text, args) {
    if (!args) { return text; }
    return text.replace(/\{(\w+)\}/g, function (whole, name) {
      return has.call(args, name) ? String(args[name]) : whole;
    });
  }

  // The catalogue's plural form for n. The table holds n = 0..size-1; every language's rule
  // looks only at n, n % 10 and n % 100, so a larger n has the form of 100 + n % 100.
  function pluralIndex(n) {
    var table = data.plural;
    n = Math.abs(Math.floor(Number(n) || 0));
    if (!table || !table.length) { return n === 1 ? 0 : 1; }
    if (n >= table.length) { n = 100 + n % 100; }
    return table[n];
  }

  function t(key, args) {
    var found = has.call(data.messages, key) ? data.messages[key] : null;
    return format(typeof found === "string" && found ? found : key, args);
  }

  function tn(singular, plural, n, args) {
    var all = {}, name;
    if (args) { for (name in args) { if (has.call(args, name)) { all[name] = args[name]; } } }
    all.n = n;
    var forms = has.call(data.messages, singular) ? data.messages[singular] : null;
    var text = forms && typeof forms === "object" ? forms[pluralIndex(n)] : null;
    if (!text) { text = n === 1 ? singular : plural; }
    return format(text, all);
  }

  // The reader's locale for dates: the browser's own when it is a variant of the page's
  // language (en-GB on an English page), else the page's language.
  function dateLocale() {
    var preferred = (win.navigator && (win.navigator.languages || [])[0]) ||
      (win.navigator && win.navigator.language) || "";
    return preferred.split("-")[0].toLowerCase() === data.lang ? preferred : data.lang;
  }

  function localeString(d, method, options) {
    try {
      return d[method](dateLocale(), options);
    } catch (e) {
      return d[method]();  // a browser that knows no such locale or options
    }
  }

  function time(d) {
    return localeString(d, "toLocaleTimeString",
                        {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  }

  // Day and month in front of the time; the year too when it is not this year's.
  function dateTime(d) {
    var options = {day: "numeric", month: "short", hour: "2-digit", minute: "2-digit",
                   second: "2-digit"};
    if (d.getFullYear() !== new Date().getFullYear()) { options.year = "numeric"; }
    return localeString(d, "toLocaleString", options);
  }

  // Everything, for a tooltip: weekday, date with the year, time.
  function fullDateTime(d) {
    return localeString(d, "toLocaleString", {weekday: "long", day: "numeric", month: "long",
                                              year: "numeric", hour: "2-digit",
                                              minute: "2-digit", second: "2-digit"});
  }

  win.chatappI18n = {
    lang: data.lang,
    t: t,
    tn: tn,
    pluralIndex: pluralIndex,
    dateLocale: dateLocale,
    time: time,
    dateTime: dateTime,
    fullDateTime: fullDateTime
  };
})(window, document);
