// The overview page's charts: the series the server embedded in #chart-data (no request).
(function () {
  "use strict";
  var node = document.getElementById("chart-data");
  if (!node || typeof Chart === "undefined") { return; }
  var data = JSON.parse(node.textContent);
  var palette = ["#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6",
                 "#dd4477", "#66aa00", "#b82e2e", "#316395"];
  function draw(id, series) {
    var names = Object.keys(series).sort();
    var canvas = document.getElementById(id);
    if (!canvas) { return; }
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.days.map(function (d) { return d.slice(5); }),
        datasets: names.map(function (name, i) {
          return { label: name === "" ? "(unattributed)" : name,
                   data: series[name].map(Number),
                   backgroundColor: palette[i % palette.length] };
        })
      },
      options: {
        animation: false, responsive: true, maintainAspectRatio: false,
        scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true,
                  title: { display: true, text: data.currency } } },
        plugins: { tooltip: { callbacks: { label: function (ctx) {
          return ctx.dataset.label + ": " + series[names[ctx.datasetIndex]][ctx.dataIndex] +
                 " " + data.currency; } } } }
      }
    });
  }
  draw("by-consumer", data.series.consumer);
  draw("by-model", data.series.model);
})();
